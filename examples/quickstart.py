"""The README's API example: train Pendulum-P (a POMDP: angle only) for 8000 steps, save, reload, run, export.

    python examples/quickstart.py        # a few minutes on 2 cores; writes runs/quickstart/

Run it again after deleting runs/quickstart/ (or pass resume=True to RESeL to continue the run).
"""

from resel import RESeL
from resel_train.envs import make_env

model = RESeL("Pendulum-P", preset="cpu", out="runs/quickstart")
model.learn(8000, progress_bar=True)                  # 8000 env steps; each learn() call trains more
model.save("runs/quickstart/pendulum.pt")

model = RESeL.load("runs/quickstart/pendulum.pt")
env = make_env("Pendulum-P", split="test")
obs, _ = env.reset(seed=0)
state, start, episode_return, done = None, True, 0.0, False
while not done:
    action, state = model.predict(obs, state, episode_start=start, deterministic=True)
    obs, reward, terminated, truncated, _ = env.step(action)
    episode_return, start, done = episode_return + reward, False, terminated or truncated
print(f"return of one episode: {episode_return:.1f}")
print(f"exported {model.export('runs/quickstart/pendulum.onnx').path}")

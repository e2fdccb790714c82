"""The README's API example: train Pendulum-P (a POMDP: angle only) for 8000 steps, save, reload, run, export.

    python examples/quickstart.py        # a few minutes on 2 cores; writes runs/Pendulum-P_mamba_s0/, p.pt, p.onnx

Run it again after deleting runs/Pendulum-P_mamba_s0/ (or pass resume=True to RESeL to continue the run).
"""

import gymnasium as gym

from resel import RESeL  # also registers the resel/<id>-v0 envs

model = RESeL("Pendulum-P", preset="cpu")  # run folder runs/Pendulum-P_mamba_s0/
model.learn(8000, progress_bar=True)  # 8000 env steps; each call trains more
model.save("p.pt")
model = RESeL.load("p.pt")
env = gym.make("resel/Pendulum-P-v0", split="test")  # held-out tasks where a family has them
obs, _ = env.reset(seed=0)
state, start, done, episode_return = None, True, False, 0.0
while not done:
    action, state = model.predict(obs, state, episode_start=start, deterministic=True)
    obs, reward, terminated, truncated, _ = env.step(action)
    start, done, episode_return = False, terminated or truncated, episode_return + reward
print(f"return of one episode: {episode_return:.1f}")
print(f"exported {model.export('p.onnx').path}")

"""A fixed-rate control loop that embeds the RESeL controller the way a robot does.

    python examples/control_loop_500hz.py MODEL                # checkpoint, .onnx or TensorRT engine
    python examples/control_loop_500hz.py --demo               # random-weight paper-size policy
    python examples/control_loop_500hz.py --demo --rate 1000 --seconds 10 --backend torch --realtime

Every period (2 ms at 500 Hz), on absolute deadlines so the loop never drifts:

    obs = robot.read_sensors()                       # latest measurement
    ctrl.step(obs, reward, out=action)               # one O(1) recurrent step, no allocation
    robot.write_actuators(action)                    # command goes out
    sleep until the next deadline (coarse sleep, then spin for the last ~0.2 ms)

The "robot" here is a MuJoCo Walker2d simulation advanced by one control period inside
``write_actuators`` (on hardware the physics runs by itself; only the controller is ours).
When an episode ends the robot is reset and ``ctrl.reset()`` starts the controller's next
episode. Reported at the end: controller step latency p50 / p99 / max, read-to-write time,
wake-up jitter, and deadline misses (a tick whose actuator write happened after its deadline;
missed ticks are skipped, never bunched up).

``--realtime`` runs the loop under SCHED_FIFO on one pinned core (needs root/CAP_SYS_NICE), as a
robot's control thread would; the controller already uses one onnxruntime thread and flushes
denormals, the other two things a real-time loop needs from it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class SimulatedRobot:
    """Sensors and actuators backed by a simulator; swap this class for the hardware driver."""

    def __init__(self, env_id: str, seed: int) -> None:
        from resel_train.envs import make_env

        self.env = make_env(env_id, seed=seed, split="test")
        self.obs, _ = self.env.reset()
        self.reward, self.episode_over, self.episodes, self.ret = 0.0, False, 0, 0.0
        self.returns: list[float] = []

    def read_sensors(self) -> np.ndarray:
        return self.obs

    def write_actuators(self, action: np.ndarray) -> None:
        self.obs, reward, terminated, truncated, _ = self.env.step(action)
        self.reward = float(reward)
        self.ret += self.reward
        self.episode_over = terminated or truncated

    def restart(self) -> None:
        self.returns.append(self.ret)
        self.obs, _ = self.env.reset()
        self.reward, self.episode_over, self.ret = 0.0, False, 0.0
        self.episodes += 1


def sleep_until(deadline_ns: int, spin_ns: int = 200_000) -> None:
    """Sleep most of the way, then spin: time.sleep alone wakes up ~50-100 us late."""
    remaining = deadline_ns - time.perf_counter_ns()
    if remaining > spin_ns:
        time.sleep((remaining - spin_ns) / 1e9)
    while time.perf_counter_ns() < deadline_ns:
        pass


def run(model: Path, backend: str, rate_hz: float, seconds: float, env_id: str, realtime: bool, seed: int) -> dict:
    from resel_deploy import Controller

    ctrl = Controller.load(model, backend=backend)  # loads, preallocates and warms up
    robot = SimulatedRobot(env_id, seed)
    if ctrl.obs_dim != robot.obs.shape[0]:
        raise SystemExit(f"{model} expects obs_dim {ctrl.obs_dim}, {env_id} gives {robot.obs.shape[0]}")
    if realtime:
        try:
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        except (AttributeError, PermissionError, OSError) as exc:
            print(f"--realtime not applied ({exc}); running with the default scheduler", file=sys.stderr)
            realtime = False

    period = int(1e9 / rate_hz)
    ticks = int(seconds * rate_hz)
    action = np.zeros(ctrl.act_dim, dtype=np.float32)
    step_ns = np.zeros(ticks, dtype=np.int64)  # preallocated: nothing grows inside the loop
    io_ns = np.zeros(ticks, dtype=np.int64)
    wake_ns = np.zeros(ticks, dtype=np.int64)
    misses = skipped = done = tick = 0
    ctrl.reset()
    tick_start = time.perf_counter_ns()
    while tick < ticks:
        woke = time.perf_counter_ns()
        obs = robot.read_sensors()
        t0 = time.perf_counter_ns()
        ctrl.step(obs, robot.reward, out=action)
        t1 = time.perf_counter_ns()
        # on hardware this sends the command; here it also advances the simulated physics, which is
        # not our latency, so the command counts as written when write_actuators is called (t1)
        robot.write_actuators(action)
        step_ns[done], io_ns[done], wake_ns[done] = t1 - t0, t1 - woke, woke - tick_start
        done += 1
        if t1 > tick_start + period:  # the command must be out within this tick's period
            misses += 1
        if robot.episode_over:
            robot.restart()
            ctrl.reset()
        tick += 1
        tick_start += period
        now = time.perf_counter_ns()
        if now > tick_start:  # overran into later ticks: skip them (never bunch up), keep the grid
            late = (now - tick_start) // period + 1
            skipped += late
            tick += late
            tick_start += late * period
        sleep_until(tick_start)
    if realtime:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    us = lambda a, q: float(np.percentile(a[:done], q)) / 1e3  # noqa: E731
    report = {
        "model": str(model), "backend": ctrl.backend, "rate_hz": rate_hz, "ticks": done, "realtime": realtime,
        "step_us": {"p50": us(step_ns, 50), "p99": us(step_ns, 99), "max": float(step_ns[:done].max()) / 1e3},
        "read_to_write_us": {"p50": us(io_ns, 50), "p99": us(io_ns, 99), "max": float(io_ns[:done].max()) / 1e3},
        "wake_jitter_us": {"p50": us(wake_ns, 50), "p99": us(wake_ns, 99), "max": float(wake_ns[:done].max()) / 1e3},
        "deadline_misses": misses, "skipped_ticks": int(skipped), "episodes_finished": robot.episodes,
        "mean_return": float(np.mean(robot.returns)) if robot.returns else None,
    }
    s, w = report["step_us"], report["wake_jitter_us"]
    print(f"{done} ticks at {rate_hz:.0f} Hz ({ctrl.backend}, {'SCHED_FIFO' if realtime else 'default scheduler'}): "
          f"controller step p50 {s['p50']:.1f} us, p99 {s['p99']:.1f} us, max {s['max']:.1f} us; "
          f"wake-up late p50 {w['p50']:.1f} us, p99 {w['p99']:.1f} us; "
          f"deadline misses {misses} ({100 * misses / max(done, 1):.2f}%), skipped ticks {skipped}; "
          f"{robot.episodes} episodes finished")
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Fixed-rate control loop around resel_deploy.Controller")
    parser.add_argument("model", nargs="?", type=Path, help="checkpoint, .onnx file or TensorRT engine")
    parser.add_argument("--demo", action="store_true", help="use a random-weight paper-size Walker2d policy")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    parser.add_argument("--rate", type=float, default=500.0, help="control rate in Hz (default 500)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--env", default="Walker2d", help="RESeL task id simulated as the robot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--realtime", action="store_true", help="SCHED_FIFO on one pinned core (root)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.demo:
        from resel.export.onnx import export_onnx
        from resel_train.testing import make_random_checkpoint

        folder = Path(tempfile.mkdtemp(prefix="resel_demo_"))
        ckpt = make_random_checkpoint(folder / "demo.pt")
        args.model = ckpt if args.backend == "torch" else export_onnx(ckpt, check_steps=16).path
    if args.model is None:
        parser.error("give a MODEL or --demo")
    return run(args.model, args.backend, args.rate, args.seconds, args.env, args.realtime, args.seed)


if __name__ == "__main__":
    main()

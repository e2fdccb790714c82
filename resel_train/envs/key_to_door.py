"""Key-to-Door: a three-room grid world for long-term credit assignment (numpy only).

Phases (one room each, 5x5 floor cells surrounded by walls; the agent is teleported between rooms):

1. explore (15 steps): a key lies somewhere; stepping on it picks it up (no reward).
2. distractor (N steps, N in {60, 120, 250, 500}): apples give reward 1 each; an eaten apple
   grows back at the same cell 20 steps later.
3. door (10 steps): stepping on the door gives reward 5 if the key was picked up in phase 1
   (once; the door then opens and disappears), nothing otherwise.

The only way to earn the final 5 is an action taken 15 + N steps earlier, with apple rewards as
noise in between. The episode always lasts exactly 15 + N + 10 steps and ends with
``terminated=True`` on the last step: the task is over, this is not a time limit.

Observation: the 5x5 egocentric crop (agent at the centre) of an RGB-like image, 3 channels in
[0, 1], flattened in (row, col, channel) order to 75 float32 values. Colours: floor black, wall
grey, key yellow, apple green, door red, agent blue. Whether the key is held is *not* observed.
Actions (Discrete(4)): 0 up, 1 down, 2 left, 3 right; walking into a wall does nothing.
``info``: the phase, whether the key is held, and ``success`` (the door was opened with the key),
which the trainer's evaluation and ``resel eval`` / ``resel rollout`` report as the success rate.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ROOM = 5  # floor cells per side
VIEW = 5  # egocentric crop side
EXPLORE_STEPS = 15
DOOR_STEPS = 10
DISTRACTOR_STEPS = (60, 120, 250, 500)
N_APPLES = 5
RESPAWN_EVERY = 20
APPLE_REWARD = 1.0
DOOR_REWARD = 5.0

EMPTY, KEY, APPLE, DOOR = 0, 1, 2, 3
PHASES = ("explore", "distractor", "door")
MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])
DOOR_CELL = (0, ROOM // 2)  # top middle of the door room

_WALL = (0.5, 0.5, 0.5)
_AGENT = (0.0, 0.0, 1.0)
_COLOURS = {KEY: (1.0, 1.0, 0.0), APPLE: (0.0, 1.0, 0.0), DOOR: (1.0, 0.0, 0.0)}


class KeyToDoorEnv(gym.Env):
    """See the module docstring. ``distractor_steps`` is the N of ``KeyToDoor-N``."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, distractor_steps: int):
        self.distractor_steps = int(distractor_steps)
        self.episode_steps = EXPLORE_STEPS + self.distractor_steps + DOOR_STEPS
        self.observation_space = spaces.Box(0.0, 1.0, shape=(VIEW * VIEW * 3,), dtype=np.float32)
        self.action_space = spaces.Discrete(4)
        self.grid = np.zeros((ROOM, ROOM), dtype=np.int8)
        self.pos = np.zeros(2, dtype=np.int64)
        self.phase = 0
        self.t = 0
        self.has_key = False
        self.door_opened = False
        self._respawn: dict[tuple[int, int], int] = {}

    # --- room set-up -------------------------------------------------------------------------
    def _free_cells(self, n: int, exclude: list[tuple[int, int]]) -> list[tuple[int, int]]:
        cells = [(r, c) for r in range(ROOM) for c in range(ROOM) if (r, c) not in exclude]
        picks = self.np_random.choice(len(cells), size=n, replace=False)
        return [cells[i] for i in picks]

    def _enter_phase(self, phase: int) -> None:
        self.phase = phase
        self.grid[:] = EMPTY
        self._respawn.clear()
        fixed = [DOOR_CELL] if phase == 2 else []
        n_objects = {0: 1, 1: N_APPLES, 2: 0}[phase]
        cells = self._free_cells(1 + n_objects, fixed)
        self.pos = np.array(cells[0])
        for cell in cells[1:]:
            self.grid[cell] = KEY if phase == 0 else APPLE
        if phase == 2:
            self.grid[DOOR_CELL] = DOOR

    # --- observation ---------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        pad = VIEW // 2 + 1  # outer wall ring plus what the crop can see beyond it
        size = ROOM + 2 * pad
        image = np.empty((size, size, 3), dtype=np.float32)
        image[:] = _WALL
        floor = image[pad : pad + ROOM, pad : pad + ROOM]
        floor[:] = 0.0
        for kind, colour in _COLOURS.items():
            floor[self.grid == kind] = colour
        r, c = self.pos + pad
        image[r, c] = _AGENT
        half = VIEW // 2
        return image[r - half : r + half + 1, c - half : c + half + 1].reshape(-1).copy()

    def _info(self) -> dict[str, Any]:
        return {"phase": PHASES[self.phase], "has_key": self.has_key, "success": self.door_opened}

    # --- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start in the key room without the key."""
        super().reset(seed=seed)
        self.t = 0
        self.has_key = False
        self.door_opened = False
        self._enter_phase(0)
        return self._observation(), self._info()

    def step(self, action):
        """Move one cell (0..3: up, down, left, right); the phases change at fixed step counts."""
        action = int(action)
        if not 0 <= action < 4:
            raise ValueError(f"action must be in 0..3, got {action}")
        self.pos = np.clip(self.pos + MOVES[action], 0, ROOM - 1)
        cell = (int(self.pos[0]), int(self.pos[1]))
        reward = 0.0
        item = self.grid[cell]
        if item == KEY:
            self.has_key = True
            self.grid[cell] = EMPTY
        elif item == APPLE:
            reward = APPLE_REWARD
            self.grid[cell] = EMPTY
            self._respawn[cell] = self.t + RESPAWN_EVERY
        elif item == DOOR and self.has_key:
            reward = DOOR_REWARD
            self.door_opened = True
            self.grid[cell] = EMPTY

        self.t += 1
        for spot, due in list(self._respawn.items()):
            if self.t >= due and spot != cell:
                self.grid[spot] = APPLE
                del self._respawn[spot]

        if self.t == EXPLORE_STEPS:
            self._enter_phase(1)
        elif self.t == EXPLORE_STEPS + self.distractor_steps:
            self._enter_phase(2)
        terminated = self.t >= self.episode_steps
        return self._observation(), reward, terminated, False, self._info()


def make_key_to_door(distractor_steps: int, split: str = "train") -> gym.Env:
    """``KeyToDoor-N``: the grid world above with an N-step distractor phase."""
    return KeyToDoorEnv(distractor_steps)

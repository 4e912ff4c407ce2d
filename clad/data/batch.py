"""The training sample: the interface between the dataset (window builder) and the model.

A window is built around step t of an episode of length T for a foresight horizon tau and an action
chunk length C. Frame indices are clamped to the episode:

    prev = max(t - tau, 0)        next = min(t + tau, T - 1)

| key                   | dtype   | shape per sample | meaning                                                   |
|-----------------------|---------|------------------|-----------------------------------------------------------|
| rgb_prev/curr/next    | uint8   | (V, 3, H, W)     | camera views in config order, as stored (OpenGL flipped)  |
| proprio_prev/curr/next| float32 | (D_p,)           | raw concatenation of the configured proprio keys          |
| actions_past          | float32 | (tau, 7)         | a_{t-tau} .. a_{t-1}, raw; steps before 0 are zeros       |
| actions_past_mask     | bool    | (tau,)           | False where padded (before the episode start)             |
| actions_future        | float32 | (C, 7)           | a_t .. a_{t+C-1}, raw; steps past the end repeat the last |
| actions_future_mask   | bool    | (C,)             | False where padded (past the episode end)                 |
| lang_emb              | float32 | (E,)             | instruction embedding of the episode's task               |
| task_index            | int64   | ()               | index of the task in the dataset manifest                 |
| feat_prev/curr/next   | float32 | (V, F)           | optional: frozen-backbone features computed in preprocess |

A batch stacks these along a leading B axis. Values are raw: the model owns the normaliser (built from
the dataset's statistics and saved with its weights), so training and rollouts normalise identically.
At episode start a rollout agent fills the past the same way: the current frame and zero actions.
"""

from __future__ import annotations

RGB_KEYS = ("rgb_prev", "rgb_curr", "rgb_next")
PROPRIO_KEYS = ("proprio_prev", "proprio_curr", "proprio_next")
FEATURE_KEYS = ("feat_prev", "feat_curr", "feat_next")
ACTION_KEYS = ("actions_past", "actions_past_mask", "actions_future", "actions_future_mask")
CONTEXT_KEYS = ("lang_emb", "task_index")

REQUIRED_KEYS = RGB_KEYS + PROPRIO_KEYS + ACTION_KEYS + CONTEXT_KEYS


def window_indices(t: int, length: int, tau: int) -> tuple[int, int, int]:
    """(prev, curr, next) frame indices of the window at step t, clamped to an episode of `length` steps."""
    if not 0 <= t < length:
        raise IndexError(f"step {t} outside an episode of {length} steps")
    return max(t - tau, 0), t, min(t + tau, length - 1)

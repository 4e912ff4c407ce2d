"""The LIBERO demonstration HDF5 layout: the one contract shared by the demo writer, the preprocessing
reader and the environment's observation adapter.

It mirrors upstream LIBERO `scripts/create_dataset.py` (the layout of the released datasets and of the
widely used 256x256 "no_noops" regeneration):

    <task_name>_demo.hdf5
      data/                          attrs: env_name, problem_info (JSON), bddl_file_name, bddl_file_content,
                                            env_args (JSON), macros_image_convention, num_demos, total
      data/demo_<i>/                 attrs: num_samples, model_file (MJCF XML), init_state (D,)
        actions       (T, 7)   float64   OSC_POSE delta action in [-1, 1], last dim = gripper (-1 open, +1 close)
        states        (T, D)   float64   flattened MuJoCo state at step t
        robot_states  (T, 9)   float64   gripper qpos (2) + eef pos (3) + eef quat (4)
        rewards       (T,)     uint8     1 at the last step
        dones         (T,)     uint8     1 at the last step
        obs/
          agentview_rgb    (T, H, W, 3) uint8   third-person camera, OpenGL convention (vertically flipped)
          eye_in_hand_rgb  (T, H, W, 3) uint8   wrist camera, same convention
          gripper_states   (T, 2)  float64
          joint_states     (T, 7)  float64
          ee_states        (T, 6)  float64      eef pos (3) + eef orientation as axis-angle (3)
          ee_pos           (T, 3)  float64
          ee_ori           (T, 3)  float64      axis-angle

H = W = 128 in the original release, 256 in the regenerated variant. Step t pairs obs[t] with actions[t]:
files written by clad store the observation the action was chosen from. (Upstream's regeneration stores
the observation after the action; the difference is one control step, which training tolerates.)
"""

from __future__ import annotations

ACTION_DIM = 7
ROBOT_STATE_DIM = 9

IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")

# name -> width of each low-dimensional observation stored under obs/
LOWDIM_KEYS: dict[str, int] = {
    "gripper_states": 2,
    "joint_states": 7,
    "ee_states": 6,
    "ee_pos": 3,
    "ee_ori": 3,
}

OBS_KEYS = IMAGE_KEYS + tuple(LOWDIM_KEYS)

# camera names used in configs -> obs key in the file -> robosuite observation key
CAMERA_TO_OBS_KEY = {"agentview": "agentview_rgb", "eye_in_hand": "eye_in_hand_rgb"}
OBS_KEY_TO_ROBOSUITE = {
    "agentview_rgb": "agentview_image",
    "eye_in_hand_rgb": "robot0_eye_in_hand_image",
}

DATA_ATTRS = (
    "env_name",
    "problem_info",
    "bddl_file_name",
    "bddl_file_content",
    "env_args",
    "macros_image_convention",
    "num_demos",
    "total",
)
DEMO_DATASETS = ("actions", "states", "robot_states", "rewards", "dones")
DEMO_ATTRS = ("num_samples", "model_file", "init_state")

DEMO_FILE_SUFFIX = "_demo.hdf5"


def demo_file_name(task_name: str) -> str:
    """Upstream names one file per task: `<task_name>_demo.hdf5`."""
    return f"{task_name}{DEMO_FILE_SUFFIX}"


def task_name_from_file(file_name: str) -> str:
    if not file_name.endswith(DEMO_FILE_SUFFIX):
        raise ValueError(f"{file_name} is not a LIBERO demo file (expected a name ending in {DEMO_FILE_SUFFIX})")
    return file_name[: -len(DEMO_FILE_SUFFIX)]

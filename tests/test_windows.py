"""Window builder (clad/data/windows.py) against the batch contract (clad/data/batch.py); no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clad.data.batch import FEATURE_KEYS, REQUIRED_KEYS, window_indices
from clad.data.episode_table import decode_episodes, encode_episodes
from clad.data.convert import seq_widths
from clad.data.libero_layout import LOWDIM_KEYS
from clad.data.windows import WindowSpec, check_sample, iter_window_batches, iter_windows, window_shapes


def make_episode(T: int = 12, H: int = 8, W: int = 10, F: int = 5, task_index: int = 1) -> dict:
    rng = np.random.default_rng(T)
    ep = {"episode_id": "f.hdf5#demo_0", "task_index": task_index, "length": T, "image_height": H, "image_width": W}
    for v, key in enumerate(("agentview_rgb", "eye_in_hand_rgb")):
        img = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
        img[:, 0, 0, 0] = np.arange(T)  # frame marker
        img[:, 0, 0, 1] = v  # view marker
        ep[key] = img
        ep[f"feat_{key}"] = (np.arange(T)[:, None] * 10 + v + np.zeros((1, F))).astype(np.float32)
    for key, d in LOWDIM_KEYS.items():
        ep[key] = rng.normal(size=(T, d)).astype(np.float32)
    ep["actions"] = (np.arange(T)[:, None] + np.arange(7)[None] / 10).astype(np.float32)  # a[t, 0] == t
    return ep


@pytest.mark.parametrize("tau", [2, 6])
def test_windows_match_contract(tau):
    T, C, F = 12, 4, 5
    ep = make_episode(T, F=F)
    lang = np.arange(16, dtype=np.float32)
    spec = WindowSpec(tau=tau, chunk=C, use_features=True)
    samples = list(iter_windows(ep, spec, lang))
    assert len(samples) == T
    expected = window_shapes(spec, (8, 10), 16, F)
    assert set(expected) == set(REQUIRED_KEYS) | set(FEATURE_KEYS)
    for t, s in enumerate(samples):
        check_sample(s, expected)
        prev, curr, nxt = window_indices(t, T, tau)
        for name, idx in (("prev", prev), ("curr", curr), ("next", nxt)):
            rgb = s[f"rgb_{name}"]  # (V, 3, H, W)
            assert rgb[0, 0, 0, 0] == idx and rgb[1, 0, 0, 0] == idx  # frame marker, both views
            assert rgb[0, 1, 0, 0] == 0 and rgb[1, 1, 0, 0] == 1  # view order = config order
            np.testing.assert_array_equal(rgb[0], ep["agentview_rgb"][idx].transpose(2, 0, 1))
            np.testing.assert_array_equal(s[f"proprio_{name}"],
                                          np.concatenate([ep["joint_states"][idx], ep["gripper_states"][idx]]))
            np.testing.assert_array_equal(s[f"feat_{name}"][:, 0], [idx * 10, idx * 10 + 1])
        # past actions: a_{t-tau} .. a_{t-1}, zeros + mask False before the start
        for j in range(tau):
            src = t - tau + j
            assert s["actions_past_mask"][j] == (src >= 0)
            if src >= 0:
                np.testing.assert_array_equal(s["actions_past"][j], ep["actions"][src])
            else:
                assert not s["actions_past"][j].any()
        # future actions: a_t .. a_{t+C-1}, repeat the last + mask False past the end
        for j in range(C):
            src = t + j
            assert s["actions_future_mask"][j] == (src < T)
            np.testing.assert_array_equal(s["actions_future"][j], ep["actions"][min(src, T - 1)])
        assert s["task_index"] == 1 and s["task_index"].dtype == np.int64
        np.testing.assert_array_equal(s["lang_emb"], lang)
    # padding really happens at both ends for these tau/C
    assert not samples[0]["actions_past_mask"].any() and samples[-1]["actions_past_mask"].all()
    assert samples[-1]["actions_future_mask"].sum() == 1 and samples[0]["actions_future_mask"].all()
    assert samples[0]["rgb_prev"][0, 0, 0, 0] == 0 and samples[-1]["rgb_next"][0, 0, 0, 0] == T - 1


def test_stride_and_batching():
    ep = make_episode(10)
    spec = WindowSpec(tau=2, chunk=3, stride=3, use_features=False)
    batches = list(iter_window_batches(ep, spec, np.zeros(4, np.float32), max_batch=2))
    assert [b["task_index"].shape[0] for b in batches] == [2, 2]
    assert [int(x) for b in batches for x in b["rgb_curr"][:, 0, 0, 0, 0]] == [0, 3, 6, 9]
    assert "feat_curr" not in batches[0]


def test_missing_feature_columns_is_clear():
    ep = make_episode(5)
    del ep["feat_agentview_rgb"]
    with pytest.raises(Exception, match="feat_agentview_rgb"):
        list(iter_windows(ep, WindowSpec(tau=2, chunk=2, use_features=True), np.zeros(3, np.float32)))


def test_spec_validation():
    with pytest.raises(ValueError):
        WindowSpec(tau=0, chunk=2)
    with pytest.raises(ValueError, match="unknown proprio"):
        WindowSpec(tau=1, chunk=2, proprio_keys=("nope",))


def test_episode_table_roundtrip_and_slices():
    eps = [dict(make_episode(T), episode_index=i, task_name="t", source_file="f", demo=f"demo_{i}", split="train")
           for i, T in enumerate((5, 9, 3))]
    keys = ("agentview_rgb", "eye_in_hand_rgb")
    table = encode_episodes(eps, keys, seq_widths(tuple(LOWDIM_KEYS)))
    # decode the whole table, a slice and record batches: the offsets logic must survive slicing
    rebatched = pa.Table.from_batches(table.to_batches(max_chunksize=1))
    for sub, expect in ((table, eps), (table.slice(1, 2), eps[1:]), (rebatched, eps)):
        got = list(decode_episodes(sub))
        assert len(got) == len(expect)
        for g, e in zip(got, expect):
            assert g["length"] == e["length"] and g["demo"] == e["demo"]
            for k in keys + ("actions",) + tuple(LOWDIM_KEYS):
                np.testing.assert_array_equal(g[k], e[k])
                assert g[k].dtype == (np.uint8 if k in keys else np.float32)

"""`moe-policy-ros train` on a tiny synthetic dataset (real HDF5 episodes, real torch, real
ONNX Runtime): the loss goes down, resume is bit-exact, a trained checkpoint exports with its
provenance and statistics and runs in the runtime as it ran in torch."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_models import TINY

from moe_policy_ros.core.backends.ort import OrtBackend
from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.runtime import MoEPolicy
from moe_policy_ros.core.types import Observation
from moe_policy_ros.data.episodes import ALOHA_JOINT_NAMES, Episode, write_episode, write_meta
from moe_policy_ros.models.export import load_checkpoint
from moe_policy_ros.train.data import split_episodes
from moe_policy_ros.train.trainer import TrainConfig, Trainer, lr_at, read_checkpoint

# the model tests' tiny size; the trainer takes its cameras from the dataset
TINY_MODEL = {**{k: v for k, v in TINY.items() if k != "cameras"}, "expert_depth": 1}


def _write_dataset(root: Path, episodes: int = 4, steps: int = 40) -> Path:
    """Episodes whose commands follow from the image colour and the joint positions."""
    rng = np.random.default_rng(0)
    for i in range(episodes):
        goal = rng.uniform(-0.5, 0.5, 14).astype(np.float32)
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        qpos = (goal * t).astype(np.float32)
        action = (goal * np.minimum(1.0, t + 0.1)).astype(np.float32)
        img = np.zeros((steps, 24, 32, 3), np.uint8)
        img[..., 0] = np.uint8(128 + 200 * goal[0])
        img[..., 1] = np.uint8(128 + 200 * goal[7])
        img[:, 8:16, 10:20, 2] = 255
        write_episode(
            root / f"episode_{i}.hdf5",
            Episode(ALOHA_JOINT_NAMES, qpos, action, {"top": img}, 50.0,
                    task="transfer_cube", seed=i, success=True),
        )
    write_meta(root, {"task": "transfer_cube", "fps": 50.0})
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("ds"))


def _config(data: Path, out: Path, family: str = "adamoe", **kw: object) -> TrainConfig:
    base = TrainConfig(
        data=str(data), family=family, out=str(out), model=dict(TINY_MODEL), steps=60,
        batch_size=16, lr=3e-3, warmup_steps=5, val_fraction=0.25, val_every=20,
        ckpt_every=20, eval_every=0, log_every=10, rollout_episodes=0, shift=2,
        calibrate_samples=64,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["adamoe", "lar"])
def test_a_few_steps_lower_the_loss(dataset: Path, tmp_path: Path, family: str) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    trainer = Trainer(_config(dataset, run, family), progress=False)
    summary = trainer.train()
    assert summary["steps"] == 60
    train = [m for m in _metrics(run) if m["kind"] == "train"]
    assert len(train) == 6
    if family == "lar":  # two phases: the second starts where the first's share ends
        phases = [m for m in _metrics(run) if m["kind"] == "phase"]
        assert [p["phase"] for p in phases] == ["policy"]
        main = [m for m in train if m["phase"] == "policy"]
        assert main[-1]["loss"] < main[0]["loss"]
    else:
        assert train[-1]["loss"] < 0.7 * train[0]["loss"], [m["loss"] for m in train]
    vals = [m["loss"] for m in _metrics(run) if m["kind"] == "val"]
    assert len(vals) == 3
    for name in ("last.pt", "best.pt", "run.json", "loss.png"):
        assert (run / name).is_file(), name
    ckpt = read_checkpoint(run / "last.pt")
    assert ckpt["training"]["step"] == 60
    assert ckpt["training"]["run"]["val_episodes"] == [
        i for i in range(4) if i not in ckpt["training"]["run"]["train_episodes"]
    ]


def test_resume_continues_with_the_same_state(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    straight, split = tmp_path / "straight", tmp_path / "split"
    # proprio noise on: its draws come from the saved augmentation stream too
    Trainer(_config(dataset, straight, steps=40, proprio_noise=0.3), progress=False).train()
    Trainer(_config(dataset, split, steps=40, proprio_noise=0.3), progress=False).train(until=25)
    mid = read_checkpoint(split / "last.pt")
    assert mid["training"]["step"] == 25
    # the saved settings win over the caller's on resume
    resumed = Trainer(_config(dataset, split, steps=999, lr=1.0), resume=True, progress=False)
    assert resumed.step == 25 and resumed.cfg.steps == 40 and resumed.cfg.lr == 3e-3
    resumed.train()
    a = read_checkpoint(straight / "last.pt")["training"]
    b = read_checkpoint(split / "last.pt")["training"]
    assert a["step"] == b["step"] == 40
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name, t in sa[k].items():
            assert torch.equal(t, sb[k][name]), f"optimizer state {k}.{name} differs"
    assert a["rng"]["sample"] == b["rng"]["sample"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_refuses_to_overwrite_or_resume_nothing(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(_config(dataset, run), resume=True, progress=False)
    Trainer(_config(dataset, run, steps=2, ckpt_every=1), progress=False).train()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_config(dataset, run), progress=False)


def test_trained_checkpoint_exports_and_runs_in_the_runtime(
    dataset: Path, tmp_path: Path
) -> None:
    from moe_policy_ros.cli import main

    torch.set_num_threads(1)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    Trainer(_config(dataset, run, steps=30), progress=False).train()
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(bundle)]) == 0
    loaded = load_bundle(bundle)
    m = loaded.manifest
    ckpt = read_checkpoint(run / "best.pt")
    run_info = ckpt["training"]["run"]
    tr = m.provenance.training
    assert tr is not None
    assert tr.dataset_sha256 == run_info["dataset_sha256"] and len(tr.dataset_sha256) == 64
    assert tr.steps == 30 and tr.demo_seeds == (0, 1, 2, 3)
    assert tr.train_episodes == 3 and tr.val_episodes == 1
    assert tr.val_loss == pytest.approx(ckpt["training"]["val_loss"])
    assert m.provenance.parity_max_abs_err is not None
    assert m.provenance.parity_max_abs_err <= 1e-4
    assert m.action.joints == ALOHA_JOINT_NAMES
    assert np.allclose(m.action.mean, run_info["stats"]["action_mean"])
    assert np.allclose(m.observation.proprio.std, run_info["stats"]["proprio_std"])
    assert m.observation.cameras[0].mean == (0.0, 0.0, 0.0)

    # the runtime on a recorded frame = the torch model on the same frame, denormalised
    from moe_policy_ros.data.episodes import Dataset

    ep = Dataset.open(dataset)[run_info["val_episodes"][0]]
    img, q = ep.images["top"][10], ep.qpos[10]
    policy = MoEPolicy(loaded, OrtBackend("cpu", intra_op_threads=1))
    got = policy.infer(Observation(images={"top": img}, proprio=q)).actions
    model = load_checkpoint(run / "best.pt")
    s = run_info["stats"]
    x = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    p = (torch.from_numpy(q)[None] - torch.tensor(s["proprio_mean"])) / torch.tensor(
        s["proprio_std"]
    )
    with torch.no_grad():
        want = model.act([x], p)[0].numpy() * np.asarray(s["action_std"]) + np.asarray(
            s["action_mean"]
        )
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_split_is_by_episode_and_deterministic() -> None:
    train, val = split_episodes(50, 0.1, seed=3)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == list(range(50))
    assert split_episodes(50, 0.1, seed=3) == (train, val)
    assert split_episodes(2, 0.1, seed=0)[1] != []  # at least one held out
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(10, 1.0, seed=0)


def test_learning_rate_warms_up_then_decays() -> None:
    cfg = TrainConfig(data="", family="adamoe", out="", lr=1e-3, warmup_steps=10,
                      min_lr_ratio=0.1)
    lrs = [lr_at(s, 0, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)


def test_rollouts_during_training_pick_the_best_checkpoint(dataset: Path, tmp_path: Path) -> None:
    """The periodic rollout exports the EMA policy and runs it in the sim (seeds 100..)."""
    torch.set_num_threads(1)
    run = tmp_path / "run"
    cfg = _config(dataset, run, steps=20, eval_every=10, rollout_episodes=1,
                  rollout_max_steps=5)
    Trainer(cfg, progress=False).train()
    rollouts = [m for m in _metrics(run) if m["kind"] == "rollout"]
    assert [r["step"] for r in rollouts] == [10, 20]
    assert all(r["episodes"] == 1 and r["seeds"] == [100] for r in rollouts)
    assert (run / "rollout_bundle" / "policy.yaml").is_file()
    best = read_checkpoint(run / "best.pt")["training"]
    assert best["rollout"]["seeds"] == [100]
    # no success in 5 steps: the tie goes to the lower validation loss
    vals = {r["step"]: r["val_loss"] for r in rollouts}
    assert best["step"] == min(vals, key=lambda s: vals[s])
    assert all(r["settle_s"] == 0.0 for r in rollouts)


def test_rollouts_start_settled_when_the_demonstrations_did(tmp_path: Path) -> None:
    """A dataset recorded with ``record --settle-s 0.3``: the rollouts' episodes start from
    the scene settled as long."""
    torch.set_num_threads(1)
    data = _write_dataset(tmp_path / "ds", episodes=2)
    write_meta(data, {"task": "transfer_cube", "fps": 50.0, "settle_s": 0.3})
    run = tmp_path / "run"
    cfg = _config(data, run, steps=10, eval_every=10, rollout_episodes=1, rollout_max_steps=3,
                  val_fraction=0.5)
    Trainer(cfg, progress=False).train()
    (rollout,) = [m for m in _metrics(run) if m["kind"] == "rollout"]
    assert rollout["settle_s"] == 0.3 and rollout["episodes"] == 1


def test_random_shift_moves_whole_images() -> None:
    from moe_policy_ros.train.data import random_shift

    x = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).reshape(2, 3, 8, 10)
    gen = torch.Generator().manual_seed(0)
    out = random_shift(x, 2, gen)
    assert out.shape == x.shape
    assert torch.equal(random_shift(x, 0, gen), x)
    for b in range(2):  # each sample is a shifted window of its replicate-padded self
        padded = torch.nn.functional.pad(x[b : b + 1], (2, 2, 2, 2), mode="replicate")[0]
        hits = [
            (dy, dx) for dy in range(5) for dx in range(5)
            if torch.equal(padded[:, dy : dy + 8, dx : dx + 10], out[b])
        ]
        assert len(hits) == 1


def test_proprio_noise_is_gaussian_in_normalised_units(dataset: Path) -> None:
    from moe_policy_ros.train.data import load_data

    data = load_data(dataset, cameras=None, image_size=None, val_fraction=0.25, split_seed=0,
                     progress=False)
    idx = np.arange(len(data.train)).repeat(50)
    gen = torch.Generator().manual_seed(1)
    _, clean, _ = data.train.batch(idx, 4, 1)
    _, noisy, _ = data.train.batch(idx, 4, 1, proprio_noise=0.3, generator=gen)
    d = noisy - clean
    assert abs(float(d.mean())) < 0.01 and abs(float(d.std()) - 0.3) < 0.01
    _, again, _ = data.train.batch(idx, 4, 1, proprio_noise=0.0, generator=gen)
    assert torch.equal(again, clean)
    with pytest.raises(ValueError, match="proprio_noise"):
        _config(dataset, dataset / "x", proprio_noise=-1.0).validate()


def test_image_effect_is_zero_for_a_policy_blind_to_its_camera(tmp_path: Path) -> None:
    """The validation metric that caught the first trained models ignoring the image."""
    from moe_policy_ros.models import build_model
    from moe_policy_ros.models.config import ModelConfig
    from moe_policy_ros.train.trainer import image_effect

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**TINY, "family": "adamoe"})
    cam = cfg.cameras[0]
    images = [torch.rand(8, 3, cam.height, cam.width)]
    proprio = torch.randn(8, cfg.proprio_dim)
    actions = torch.randn(8, cfg.chunk_length, cfg.action_dim)
    model = build_model(cfg).eval()
    seeing = image_effect(model, (images, proprio, actions))
    with torch.no_grad():  # cut the camera token off: the policy can only use proprio
        model.vision[0].proj.weight.zero_()
        model.vision[0].proj.bias.zero_()
    assert image_effect(model, (images, proprio, actions)) == pytest.approx(0.0, abs=1e-6)
    assert seeing > 1e-3

"""User data: image folders and .npz files, their errors, the seeded split, and training that resumes."""

import numpy as np
import pytest
from PIL import Image

from pomonag_edge.userdata import DataError, load_user_data, stratified_split


def _folder(root, per_class=4, classes=("a", "b", "c"), size=(8, 8), mode="L"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size[::-1] if mode == "L" else (*size[::-1], 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(root / c / f"{i}.png")
    return root


def test_folder_is_resized_to_three_channels_and_normalised_on_the_training_split(tmp_path):
    data = load_user_data(_folder(tmp_path / "d"), input_hw=32, seed=0)
    assert data.x_train.shape[1:] == (3, 32, 32) and data.num_classes == 3 and data.classes == ["a", "b", "c"]
    assert len(data.y_train) + len(data.y_val) == 12 and sorted(set(data.y_val.tolist())) == [0, 1, 2]
    assert np.allclose(data.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)  # normalised with the train split's stats
    assert data.source["counts"] == [4, 4, 4] and data.source["split"]["n_val"] == 3
    assert len(data.source["normalisation"]["mean"]) == 3


def test_split_is_stratified_and_fixed_by_the_seed():
    labels = np.repeat(np.arange(4), 25)
    a, b = stratified_split(labels, 3), stratified_split(labels, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(stratified_split(labels, 4)[1], a[1])
    assert np.bincount(labels[a[1]]).tolist() == [5, 5, 5, 5]
    assert len(np.intersect1d(*a)) == 0 and len(a[0]) + len(a[1]) == 100


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "d").mkdir() or p / "d", "holds no class folders"),
    (lambda p: _folder(p / "d", classes=("only",)), "has 1 class"),
    (lambda p: _folder(p / "d", per_class=1), "needs at least 2"),
    (lambda p: _folder(p / "d", size=(40, 8)), "more than 4:1"),
])
def test_bad_folders_are_one_clear_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_user_data(make(tmp_path))


def test_empty_class_folder_and_unreadable_file_are_named(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no"):
        load_user_data(root)
    (root / "empty").rmdir()
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_user_data(root)


def test_npz_layouts_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([3, 7], 5)  # labels need not start at 0
    for name, x in {"nhw": rng.integers(0, 255, (10, 8, 8), dtype=np.uint8),
                    "nhwc": rng.random((10, 8, 8, 3), dtype=np.float32),
                    "nchw": rng.random((10, 1, 16, 16), dtype=np.float32)}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        data = load_user_data(tmp_path / f"{name}.npz")
        assert data.x_train.shape[1:] == (3, 32, 32) and data.classes == ["3", "7"], name
    np.savez(tmp_path / "nox.npz", images=np.zeros((4, 8, 8)), y=np.arange(4))
    with pytest.raises(DataError, match="no array x"):
        load_user_data(tmp_path / "nox.npz")
    np.savez(tmp_path / "ragged.npz", x=np.array([np.zeros((8, 8)), np.zeros((4, 4))], dtype=object), y=[0, 1])
    with pytest.raises(DataError, match="one size"):
        load_user_data(tmp_path / "ragged.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((4, 8, 8)), y=np.arange(3))
    with pytest.raises(DataError, match="4 images but y 3"):
        load_user_data(tmp_path / "count.npz")


def test_bad_data_exits_2_with_one_line(tmp_path):
    from click.testing import CliRunner

    from pomonag_edge.cli import cli

    r = CliRunner().invoke(cli, ["probe", "--data", str(tmp_path / "nothing"), "--probes", "5"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "does not exist" in r.output


def _tiny_task(tmp_path, per_class: int):
    """(space, arch, data): three classes of random 8x8 images and an NB201 net without convolutions, quick to
    train on one thread."""
    import torch

    from pomonag_edge.spaces import get_space

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "t.npz", x=rng.integers(0, 255, (3 * per_class, 8, 8), dtype=np.uint8),
             y=np.repeat([0, 1, 2], per_class))
    space = get_space("nb201")
    arch = space.parse("|avg_pool_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|")
    return space, arch, load_user_data(tmp_path / "t.npz")


@pytest.mark.slow
def test_training_resumes_to_the_same_net(tmp_path):
    import torch

    from pomonag_edge.training import Recipe, train_net

    space, arch, data = _tiny_task(tmp_path, 16)
    recipe = Recipe(epochs=3, batch_size=16, seed=2)
    whole = train_net(space, arch, data, recipe, checkpoint=tmp_path / "a.pt")

    class Stop(Exception):
        pass

    def stop_after_two(epoch, total, loss):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_net(space, arch, data, recipe, checkpoint=tmp_path / "b.pt", progress=stop_after_two)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["epoch"] == 2
    resumed = train_net(space, arch, data, recipe, checkpoint=tmp_path / "b.pt")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["accuracy"] == whole["accuracy"]
    a, b = whole["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.slow
def test_a_spoiled_epoch_checkpoint_is_discarded_and_the_net_trained_anew(tmp_path, capsys):
    """An interrupted net's checkpoint cut short, or of our kind and identity but holding another net's state:
    training starts at epoch 1 (a note says why) and ends where an uninterrupted run does."""
    import torch

    from pomonag_edge.training import Recipe, train_net

    space, arch, data = _tiny_task(tmp_path, 8)
    recipe = Recipe(epochs=2, batch_size=8, seed=2)
    whole = train_net(space, arch, data, recipe, checkpoint=tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:500])
    torch.save({**state, "epoch": 1, "model": {"stem.weight": torch.zeros(3)}}, tmp_path / "other.pt")
    for name, why in (("cut", "cannot be read"), ("other", "does not fit this net")):
        capsys.readouterr()
        again = train_net(space, arch, data, recipe, checkpoint=tmp_path / f"{name}.pt")
        assert [h["epoch"] for h in again["history"]] == [1, 2] and again["accuracy"] == whole["accuracy"]
        note = capsys.readouterr().err
        assert f"checkpoint {tmp_path / name}.pt is discarded, it {why}" in note, note
        assert torch.load(tmp_path / f"{name}.pt", weights_only=True)["epoch"] == 2  # rewritten whole

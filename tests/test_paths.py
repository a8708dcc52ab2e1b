import pytest

from monetpipe.errors import TaskNotFoundError
from monetpipe.paths import MonetPaths, find_task


def _make(root, *names):
    for n in names:
        (root / n).mkdir(parents=True)
        (root / n / "dataset.json").write_text("{}")


def test_roots_resolved_when_called_not_at_import(monkeypatch, tmp_path):
    monkeypatch.setenv("MONET_raw", str(tmp_path / "r"))
    monkeypatch.delenv("MONET_results", raising=False)
    paths = MonetPaths.from_env(base=tmp_path / "base")
    assert paths.raw == (tmp_path / "r").resolve()
    assert paths.results == (tmp_path / "base" / "results").resolve()


@pytest.mark.parametrize(
    "spec", ["Task04", "4", "004", "Task004", "Task04_Hippocampus", "Dataset004_Hippocampus", "task04_hippocampus"]
)
def test_task_specs_match_numerically(tmp_path, spec):
    _make(tmp_path, "Task04_Hippocampus", "Task07_Pancreas")
    name, folder = find_task(spec, [tmp_path])
    assert name == "Task04_Hippocampus" and folder == tmp_path / "Task04_Hippocampus"


def test_nnunet_three_digit_folder_matches_msd_number(tmp_path):
    _make(tmp_path, "Task007_Pancreas")
    assert find_task("Task07", [tmp_path])[0] == "Task007_Pancreas"


def test_path_spec(tmp_path):
    _make(tmp_path, "Task04_Hippocampus")
    name, folder = find_task(str(tmp_path / "Task04_Hippocampus"), [])
    assert name == "Task04_Hippocampus" and folder == (tmp_path / "Task04_Hippocampus").resolve()


def test_unknown_task_lists_what_exists(tmp_path):
    _make(tmp_path, "Task04_Hippocampus")
    with pytest.raises(TaskNotFoundError, match="Task04_Hippocampus"):
        find_task("Task07", [tmp_path])


def test_ambiguous_task_is_refused(tmp_path):
    _make(tmp_path, "Task04_Hippocampus", "Dataset004_Other")
    with pytest.raises(TaskNotFoundError, match="ambiguous"):
        find_task("4", [tmp_path])
    assert find_task("Dataset004_Other", [tmp_path])[0] == "Dataset004_Other"

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


def test_a_path_names_the_task_and_each_command_looks_in_its_own_root(monet_roots):
    _make(monet_roots.raw, "Task04_Hippocampus")
    _make(monet_roots.preprocessed, "Task04_Hippocampus")
    raw_task = monet_roots.raw / "Task04_Hippocampus"
    # the raw folder given to training means the preprocessed task of that name, and vice versa
    assert find_task(str(raw_task), [monet_roots.preprocessed]) == (
        "Task04_Hippocampus",
        (monet_roots.preprocessed / "Task04_Hippocampus").resolve(),
    )
    assert find_task(str(monet_roots.preprocessed / "Task04_Hippocampus") + "/", [monet_roots.raw]) == (
        "Task04_Hippocampus",
        raw_task.resolve(),
    )
    assert find_task(str(raw_task), [monet_roots.raw])[1] == raw_task.resolve()


def test_a_path_into_another_root_says_where_the_command_looked(monet_roots):
    _make(monet_roots.raw, "Task04_Hippocampus")
    raw_task = monet_roots.raw / "Task04_Hippocampus"
    with pytest.raises(TaskNotFoundError) as info:
        find_task(str(raw_task), [monet_roots.preprocessed])
    message = str(info.value)
    assert f"looks for it in MONET_preprocessed ({monet_roots.preprocessed})" in message
    assert f"{raw_task} is the task's folder in MONET_raw, which this command does not read" in message
    assert "monet_plan_and_preprocess -t Task04_Hippocampus" in message


def test_a_path_outside_the_roots_is_used_for_its_name_only(monet_roots, tmp_path):
    _make(tmp_path / "downloads", "Task04_Hippocampus")
    elsewhere = tmp_path / "downloads" / "Task04_Hippocampus"
    with pytest.raises(TaskNotFoundError, match=f"set the variable of the root .* to {tmp_path / 'downloads'}"):
        find_task(str(elsewhere), [monet_roots.raw])
    with pytest.raises(TaskNotFoundError, match="not a task folder name"):
        find_task(str(tmp_path / "downloads"), [monet_roots.raw])


def test_unknown_task_lists_what_exists(tmp_path):
    _make(tmp_path, "Task04_Hippocampus")
    with pytest.raises(TaskNotFoundError, match="Task04_Hippocampus"):
        find_task("Task07", [tmp_path])


def test_ambiguous_task_is_refused(tmp_path):
    _make(tmp_path, "Task04_Hippocampus", "Dataset004_Other")
    with pytest.raises(TaskNotFoundError, match="ambiguous"):
        find_task("4", [tmp_path])
    assert find_task("Dataset004_Other", [tmp_path])[0] == "Dataset004_Other"

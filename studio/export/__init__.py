"""Export a chat model as a file llama.cpp, Ollama and LM Studio run: GGUF at F16, Q8_0, Q4_K_M or Q5_K_M (a
fine-tune run with its adapter merged in, a model folder, or the starter), or a run's adapter alone as a GGUF LoRA
file, with an Ollama Modelfile beside the GGUF.

    from studio.export import ExportRequest, export
    result = export(ExportRequest("studio-data/runs/RUN", "q4_k_m"), progress=lambda stage, f: ...)
    result.path, result.modelfile, result.ollama_command

    python -m studio.export SOURCE --to FORMAT [--out DIR]     # the same from a shell (studio.export.__main__)

Rooms: `request` (what to export, what was written), `sources` (run / folder / starter, checked), `convert` (HF
weights -> GGUF), `vocab` (the tokenizer and chat template), `quantize` (llama.cpp's quantizer), `lora` (GGUF
LoRA), `modelfile` (Ollama), `files` (disk check, atomic writes), `pipeline` (the order of it all). Importing this
package imports no torch.
"""

from __future__ import annotations

from studio.export.convert import COVERED, ExportCancelled
from studio.export.modelfile import Modelfile
from studio.export.modelfile import parse as parse_modelfile
from studio.export.pipeline import default_out_dir, export
from studio.export.quantize import offered
from studio.export.request import FORMAT_LABELS, FORMATS, ExportRequest, ExportResult, Progress

__all__ = [
    "COVERED",
    "FORMATS",
    "FORMAT_LABELS",
    "ExportCancelled",
    "ExportRequest",
    "ExportResult",
    "Modelfile",
    "Progress",
    "default_out_dir",
    "export",
    "offered",
    "parse_modelfile",
]

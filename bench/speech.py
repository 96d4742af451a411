"""Speech speed: the studio's transcription path against a bare faster-whisper call on the same model, same run.

The offline starter model (Whisper tiny.en, CTranslate2 int8 on the CPU) transcribes the same recording both
ways, alternating, with the same decoding options (beam 5, temperature fallback, conditioning on previous text).
The bare call is `WhisperModel.transcribe(path)` with its segments consumed; the studio's path is
`SpeechEngine.complete()`: the file checked, ffmpeg decoding in windows, the model leased from the manager, segments
collected, progress reported. Prints the real-time factor (seconds of audio per second of processing) of both and
the ratio of their times, from the medians and from the best runs (the best is the steadier figure on a busy
machine). Targets: studio/bare <= 1.05; real-time factor >= 10 on 2 cores.

    python bench/speech.py                       # assets/speech-sample.ogg (55 s of espeak-ng speech)
    python bench/speech.py --audio talk.mp3      # any recording
    python bench/speech.py --vad                 # both with voice-activity filtering on
    python bench/speech.py --repeat 4            # the sample 4 times in a row (3.6 minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.config import StudioConfig  # noqa: E402
from studio.context import build_context  # noqa: E402
from studio.engines.audio import probe_audio  # noqa: E402
from studio.engines.speech import SpeechParams  # noqa: E402
from studio.models.speech_starter import starter_spec  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "speech-sample.ogg"


def bare(model, path: Path, params: SpeechParams) -> tuple[float, str]:
    """Seconds and text of a plain faster-whisper call (it decodes the file itself, with PyAV)."""
    t0 = time.perf_counter()
    segments, _ = model.transcribe(
        str(path),
        beam_size=params.beam_size,
        best_of=params.beam_size,
        temperature=list(params.temperatures),
        condition_on_previous_text=True,
        vad_filter=params.vad_filter,
    )
    text = " ".join(s.text.strip() for s in segments)
    return time.perf_counter() - t0, text


def studio(ctx, spec, path: Path, params: SpeechParams) -> tuple[float, str]:
    t0 = time.perf_counter()
    transcript = ctx.speech.complete(spec, path, params)
    return time.perf_counter() - t0, transcript.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=SAMPLE, help="the recording (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--vad", action="store_true", help="voice-activity filter on in both")
    parser.add_argument("--repeat", type=int, default=1, help="play the recording this many times in a row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as data:
        if args.repeat > 1:  # a longer recording: the fixed costs (ffmpeg's start, about 0.1 s) weigh less
            longer = Path(data) / f"repeated{args.audio.suffix}"
            loop = ["ffmpeg", "-v", "error", "-stream_loop", str(args.repeat - 1), "-i", str(args.audio)]
            subprocess.run([*loop, "-c", "copy", str(longer)], check=True)
            args.audio = longer
        duration = probe_audio(args.audio).duration or 0.0
        ctx = build_context(StudioConfig(device="cpu", data_dir=Path(data)), start_monitor=False)
        spec = starter_spec(ctx.device)
        params = SpeechParams(beam_size=5, vad_filter=args.vad)
        with ctx.manager.acquire(spec) as lease:
            model = lease.model
            bare(model, args.audio, params)  # warm-up: both share the loaded model
            studio(ctx, spec, args.audio, params)
            s_times, b_times = [], []
            for i in range(args.runs):  # alternate, so drift in machine load hits both alike
                s, s_text = studio(ctx, spec, args.audio, params)
                b, b_text = bare(model, args.audio, params)
                s_times.append(s)
                b_times.append(b)
                same = "same text" if s_text == b_text else "texts differ"
                print(f"run {i + 1}: studio {s:.2f} s, bare {b:.2f} s ({same})", flush=True)
        ctx.close()
    s, b = statistics.median(s_times), statistics.median(b_times)
    s_best, b_best = min(s_times), min(b_times)
    where = f"CPU, {os.cpu_count()} cores"
    print(f"audio: {args.audio.name}, {duration:.1f} s; model: {spec.name} ({spec.precision}, {where})")
    vad = "on" if args.vad else "off"
    print(f"options: beam 5, temperature fallback, voice-activity filter {vad}; {args.runs} runs each, alternating")
    print(f"studio path:         median {s:.2f} s (real-time factor {duration / s:.1f}), best {s_best:.2f} s")
    print(f"bare faster-whisper: median {b:.2f} s (real-time factor {duration / b:.1f}), best {b_best:.2f} s")
    print(f"ratio studio/bare (time): median {s / b:.3f}, best {s_best / b_best:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()

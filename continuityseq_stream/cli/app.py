"""`continuityseq-stream`: the command line. Thin: parse flags -> `GenerationConfig` -> run.

`main` is a click group whose default command is `run`, so both of these work:

    continuityseq-stream --model b-f/ContinuitySeq-A --prompt "..." --times 4
    continuityseq-stream run --model demo --prompt "a red circle moving left on a gray background"

Adding a subcommand is one line: `main.add_command(my_click_command)` (e.g. in this module's
bottom or in the module that defines it, imported here).

`run` takes every flag of the original `inference.py` (short and long names as the original;
underscore and hyphen spellings both accepted) and writes an H.264 mp4 while chunks arrive. The
loop that moves chunks to the output is `runtime.loop.run` (producer process, ring buffer, several
sinks); `prepare_stream()` builds its sinks and options first, so that bad input fails before it.

Bad input is refused before anything starts, in this order: flag values (`GenerationConfig`),
`pipeline.preflight.preflight` (files, models, the upscaler's minimum size), `prepare_stream` (runtime
options, the frame ring's shared memory, every --sink). Library errors name arguments; `flag_for`
spells them as this command's flags (see errors.py).

Errors: a `ContinuitySeqError` (or a click usage error) becomes one line on stderr and exit status 2.
Ctrl-C / SIGTERM stop gracefully (sinks drain and close, status 0); a second Ctrl-C forces (130).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from typing import Iterable, Optional

import click
from click.core import ParameterSource

from ..config import DEFAULT_MODEL, DEFAULT_MODEL_2D, DEFAULT_UPSCALER, DTYPES, GenerationConfig
from ..errors import ConfigError, ContinuitySeqError

logger = logging.getLogger("continuityseq_stream")

PROG = "continuityseq-stream"


# -- the group with a default command -----------------------------------------------------------
class DefaultGroup(click.Group):
    """A group that runs `default_command` when the first argument is not a subcommand, and that
    reports errors in one line (exit status 2) instead of a usage block or a traceback."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        elif not args:
            args = [self.default_command]
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102 - see class docstring
        try:
            rv = super().main(args=args, prog_name=prog_name or PROG, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo(f"{PROG}: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            hint = f" (see {PROG} --help)" if isinstance(e, click.UsageError) else ""
            click.echo(f"{PROG}: error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(2)
        except ContinuitySeqError as e:
            click.echo(f"{PROG}: error: {' '.join(e.render(flag_for).split())}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(f"{PROG}: interrupted", err=True)
            sys.exit(130)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


def flag_for(name: str) -> str:
    """The `run` flag that sets argument `name`, as errors spell it: 'guidance_scale' ->
    '-g/--guidance-scale', 'sinks' -> '--sink'. A name no flag sets is returned unchanged.

    Library errors name arguments (`ContinuitySeqError.names`); this is the one map from those names
    to flags, read from the click options themselves so that it cannot drift from them."""
    command = main.commands.get("run")
    for param in getattr(command, "params", ()):
        if param.name == name and isinstance(param, click.Option):
            short = [o for o in param.opts if not o.startswith("--")]
            long = [o for o in param.opts if o.startswith("--")]
            return "/".join(short[:1] + long[:1])
    return name


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="continuityseq_stream", prog_name=PROG)
def main() -> None:
    """Never-ending text-to-video with ContinuitySeq models, streamed while it is generated.

    Without a subcommand, runs `run` (the original inference.py flags).
    """


# -- output naming and the run loop ----------------------------------------------------------------
def slugify(text: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "video"


def output_stem(config: GenerationConfig, short_id: Optional[str] = None) -> str:
    """`<prompt-slug>_<short id>[_<model name>]` (model name with -N/--include-model)."""
    stem = f"{slugify(config.prompt)}_{short_id or uuid.uuid4().hex[:8]}"
    if config.include_model:
        stem += "_" + slugify(os.path.basename(os.path.normpath(config.model)), 40)
    return stem


def prepare_stream(config: GenerationConfig, output_path: str, *, save_init_to: Optional[str] = None,
                   sinks: Iterable[str] = (), duration: Optional[float] = None, ring_frames: int = 64,
                   schedule=None, control: Optional[str] = None, control_allow_remote: bool = False,
                   sink_timeout: float = 10.0, threads: Optional[int] = None):
    """The sinks and `RuntimeOptions` of a run, every cheap check of them done (bad input raises
    here, before anything starts: option values, the frame ring's shared memory, each --sink URI and
    target). Without `sinks`, the one sink is the mp4 file at `output_path` (created at the first
    frame: a run that fails before it leaves nothing behind).
    schedule: a `PromptSchedule` (--prompts-file); control: the --control bind address;
    sink_timeout: --sink-timeout (a sink stuck that long is detached, see docs/reliability.md);
    threads: the producer's torch CPU threads (--threads; None: the default of runtime/threads.py)."""
    from ..runtime.ringbuffer import check_ring_memory
    from ..runtime.loop import RuntimeOptions, build_sinks

    options = RuntimeOptions(duration=duration, ring_frames=ring_frames,
                             source_kwargs={"save_init_to": save_init_to}, schedule=schedule,
                             control=control, control_allow_remote=control_allow_remote,
                             sink_timeout=sink_timeout, threads=threads)
    check_ring_memory(options.ring_frames, *config.frame_size)
    if not sinks:  # the path as a sink object: a '?' in -o must not be read as URI options
        from ..sinks.file import FileSink

        return [FileSink(output_path)], options
    return build_sinks(sinks), options


# -- the `run` command ---------------------------------------------------------------------------
def _names(short: Optional[str], long: str, *more: str) -> list[str]:
    """Short name, the long name, and its other spelling (hyphens <-> underscores)."""
    other = "--" + (long[2:].replace("-", "_") if "-" in long[2:] else long[2:].replace("_", "-"))
    names = ([short] if short else []) + [long]
    if other != long:
        names.append(other)
    return names + list(more)


def _opt(short, long, dest, **kw):
    return click.option(*_names(short, long), dest, **kw)


#: -WI/-HI help: where the size comes from when the flag is not given
SIZE_HELP = ("Video {0} (multiple of 8). Not given: the -i/--init-video {0} rounded down to a multiple of 8, "
             "else 32 with --model demo, else the default.")

RUN_OPTIONS = [
    _opt("-m", "--model", "model", default=DEFAULT_MODEL, show_default=True,
         help="Model folder or hub id (diffusers layout), 'demo' (small model trained on moving shapes, shipped; "
              "its own settings for the size/frames/CX/guidance/steps flags you do not give) or 'demo-random' "
              "(tiny random-weight model); both offline."),
    _opt("-p", "--prompt", "prompt", default=None,
         help="Text prompt (required unless --prompts-file gives the prompts)."),
    _opt("-t", "--times", "times", type=int, default=1, show_default=True,
         help="Number of chunks (each continues from the last frames of the previous); 0 = until stopped."),
    _opt("-o", "--output-dir", "output_dir", default="./output", show_default=True, help="Where the mp4 goes."),
    _opt("-n", "--negative-prompt", "negative_prompt", default=None, help="Negative prompt (default: empty)."),
    _opt("-T", "--num-frames", "num_frames", type=int, default=8, show_default=True, help="Frames per chunk."),
    _opt("-CN", "--min_conditioning_n_sample_frames", "min_conditioning_frames", type=int, default=1,
         show_default=True, help="Min conditioning frames k, drawn after each chunk."),
    _opt("-CX", "--max_conditioning_n_sample_frames", "max_conditioning_frames", type=int, default=8,
         show_default=True, help="Max conditioning frames k (also: frames taken from --init-video)."),
    _opt("-WI", "--width", "width", type=int, default=576, show_default=True, help=SIZE_HELP.format("width")),
    _opt("-HI", "--height", "height", type=int, default=320, show_default=True, help=SIZE_HELP.format("height")),
    _opt("-IW", "--image-width", "image_width", type=int, default=None, help="Init image width for -MP (default: video width)."),
    _opt("-IH", "--image-height", "image_height", type=int, default=None, help="Init image height for -MP (default: video height)."),
    _opt("-MP", "--model-2d", "model_2d", default=None,
         help=f"Text-to-image model for the first frame, or 'demo' (tiny, random) [default: {DEFAULT_MODEL_2D}; "
              "'demo' with --model demo-random; not used by --model demo, which draws its first frame]."),
    _opt("-i", "--init-image", "init_image", default=None,
         help="Start from this image; the video takes its size, rounded down to multiples of 8, unless -WI/-HI "
              "are given (only one: the other keeps the image's aspect ratio)."),
    _opt(None, "--init-video", "init_video", default=None,
         help="Continue this video (its last CX frames condition the first chunk); its frame size sets the video "
              "size as with --init-image."),
    _opt("-VS", "--vae-scale", "vae_scale", type=float, default=None, help="VAE scaling factor (default: the VAE config's, 0.18215 for SD VAEs)."),
    _opt("-VB", "--vae-batch-size", "vae_batch_size", type=int, default=16, show_default=True, help="Frames per VAE call."),
    _opt("-s", "--num-steps", "num_steps", type=int, default=25, show_default=True, help="DDIM steps per chunk."),
    _opt("-g", "--guidance-scale", "guidance_scale", type=float, default=30.0, show_default=True, help="Classifier-free guidance."),
    _opt("-IG", "--image-guidance-scale", "image_guidance_scale", type=float, default=12.5, show_default=True,
         help="Guidance of the -MP text-to-image model."),
    _opt("-f", "--fps", "fps", type=float, default=16.0, show_default=True, help="Output frame rate."),
    _opt("-d", "--device", "device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else mps, else cpu)."),
    _opt(None, "--dtype", "dtype", type=click.Choice(DTYPES), default=None,
         help="Weights/compute dtype (default: float16 on CUDA, float32 otherwise)."),
    _opt("-x", "--xformers", "xformers", is_flag=True, help="Use xformers attention (must be installed)."),
    _opt("-S", "--sdp", "sdp", is_flag=True, help="Use PyTorch SDPA attention (the default; kept for the original's command lines)."),
    _opt(None, "--no-sdp", "no_sdp", is_flag=True, help="Use plain (math) attention instead of SDPA."),
    _opt("-r", "--seed", "seed", type=int, default=None, help="Seed (default: random in [0, 9999999], logged)."),
    _opt("-I", "--save-init", "save_init", is_flag=True, help="Also write the init image (PNG) beside the video."),
    _opt("-N", "--include-model", "include_model", is_flag=True, help="Put the model name in the file name."),
    _opt("-u", "--upscale", "upscale", is_flag=True, help="x2 latent upscaler per chunk (see --upscaler)."),
    _opt(None, "--upscaler", "upscaler", default=DEFAULT_UPSCALER, show_default=True, help="Latent upscaler model for -u."),
    _opt(None, "--original-postprocess", "original_postprocess", is_flag=True,
         help="The original's look: frames truncated (not rounded) to 8 bits, then CLAHE (clip 1.2, 1x1 tiles) "
              "and its gamma 0.98 per frame and channel (darker: white becomes 228). See docs/differences.md."),
    _opt(None, "--compile", "compile", is_flag=True,
         help="torch.compile the UNet: the first chunk waits for the compilation (minutes), later steps run faster."),
    # streaming (runtime/)
    _opt(None, "--sink", "sinks", multiple=True, metavar="URI",
         help="Where frames go, repeatable: file:PATH, rtmp://..., ffmpeg:URL, zmq+pub://HOST:PORT, "
              "zmq+push://HOST:PORT, preview, - (raw rgb24 on stdout). Default: the mp4 in --output-dir."),
    _opt(None, "--forever", "forever", is_flag=True, help="Run until stopped (same as --times 0)."),
    _opt(None, "--duration", "duration", type=float, default=None, help="Stop after so many seconds from the first frame."),
    _opt(None, "--ring-frames", "ring_frames", type=int, default=64, show_default=True,
         help="Frames the shared-memory ring holds between generation and the sinks."),
    _opt(None, "--sink-timeout", "sink_timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
         help="A sink stuck this long in one write (a server that never answers, a reader that stopped) is "
              "detached and the others go on; RTMP/ffmpeg sinks restart their ffmpeg instead."),
    _opt(None, "--threads", "threads", type=int, default=None, metavar="N",
         help="CPU threads of the model's process (torch intra-op). Default: $OMP_NUM_THREADS if set, "
              "else the available CPUs minus one (a core for the sinks and ffmpeg). Use 1 on a busy machine."),
    # prompt schedules and live control (prompts/, control/)
    _opt(None, "--prompts-file", "prompts_file", default=None, metavar="FILE",
         help="One prompt per line (optional 'PROMPT | NEGATIVE', optional mm:ss stamps); overrides -p."),
    _opt(None, "--prompts-interval", "prompts_interval", type=int, default=None, metavar="N",
         help="Chunks per prompt of --prompts-file, blending into the next (default 4; not with stamps)."),
    _opt(None, "--loop-prompts", "loop_prompts", is_flag=True, help="Start --prompts-file over after its last prompt."),
    _opt(None, "--control", "control", default=None, metavar="ADDR",
         help="Take live JSON commands on this ZeroMQ address, e.g. tcp://127.0.0.1:5557 (loopback only)."),
    _opt(None, "--control-allow-remote", "control_allow_remote", is_flag=True,
         help="Accept a non-loopback --control address (anyone reaching it can steer and stop the run)."),
    # resume after a crash (resume.py, docs/resume.md)
    _opt(None, "--state-dir", "state_dir", default=None, metavar="DIR",
         help="After every chunk, save atomically what continuing needs (latents, counters, RNG states, live "
              "settings) in DIR/state.safetensors."),
    _opt(None, "--resume", "resume", default=None, metavar="DIR",
         help="Continue the video whose state a run saved in DIR (after a crash, kill -9, restart): no new first "
              "frame, frame indices go on; needs the same -m/-WI/-HI/-T; keeps saving in DIR."),
]

STREAM_OPTIONS = ("sinks", "forever", "duration", "ring_frames", "control", "control_allow_remote", "sink_timeout", "threads")
PROMPT_OPTIONS = ("prompts_file", "prompts_interval", "loop_prompts")


def schedule_from_options(options: dict):
    """--prompts-file/--prompts-interval/--loop-prompts -> a PromptSchedule or None (ConfigError when
    the file is bad or the other two come without it)."""
    from ..prompts import PromptSchedule

    path, interval, loop = (options[k] for k in PROMPT_OPTIONS)
    if path is None:
        if interval is not None or loop:
            flag = "--prompts-interval" if interval is not None else "--loop-prompts"
            raise ConfigError(f"{flag}: needs --prompts-file FILE")
        return None
    return PromptSchedule.from_file(path, interval=interval, loop=loop)


def config_from_options(options: dict) -> GenerationConfig:
    """Click's option values -> a validated GenerationConfig (ConfigError on bad values)."""
    values = dict(options)
    values.pop("sdp", None)
    values["sdp"] = not values.pop("no_sdp", False)
    return GenerationConfig.from_dict(values)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging() -> None:
    root = logging.getLogger("continuityseq_stream")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


#: GenerationConfig field -> DEMO_SETTINGS key: what the trained demo was trained and evaluated with
_DEMO_FLAGS = {"width": "width", "height": "height", "num_frames": "num_frames",
               "max_conditioning_frames": "max_conditioning_frames", "guidance_scale": "guidance_scale",
               "num_steps": "num_inference_steps"}


def _given(field: str) -> bool:
    """True when the user gave this option (command line or environment), not its default."""
    source = click.get_current_context().get_parameter_source(field)
    return source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def _size_from_init(options: dict) -> bool:
    """-i/--init-video without both -WI and -HI: the video takes the image's (the video's frame) size,
    rounded down to multiples of 8, as the original; a given -WI or -HI wins (see
    `init_files.fit_video_size`). Returns True when the size was set here."""
    from ..pipeline.init_files import fit_video_size, init_source_size

    if _given("width") and _given("height"):
        return False
    source = init_source_size(options["init_image"], options["init_video"])
    if source is None:
        return False
    name = "init_image" if options["init_image"] is not None else "init_video"
    width, height = fit_video_size(source, options["width"] if _given("width") else None,
                                   options["height"] if _given("height") else None, name=name)
    options["width"], options["height"] = width, height
    logger.info("video size %dx%d from %s of %dx%d (multiples of 8; -WI/-HI choose another)",
                width, height, flag_for(name), *source)
    return True


def _demo_defaults(options: dict, skip: Iterable[str] = ()) -> list[str]:
    """`--model demo`: the trained demo's own settings for the flags the user left at their default
    (the original's 576x320, 8 frames, guidance 30 are far outside what that tiny model knows).
    `skip`: fields already decided otherwise (the size an init image gave). Returns what was applied,
    for a log line once the input has passed its checks (a run refused for bad input prints its one
    error line and nothing else)."""
    from ..demo.trained import DEMO_SETTINGS

    applied = []
    for field, key in _DEMO_FLAGS.items():
        if field not in skip and not _given(field):
            options[field] = DEMO_SETTINGS[key]
            applied.append(f"{field} {DEMO_SETTINGS[key]}")
    return applied


def build_run_config(options: dict):
    """The `run` flags' values -> (GenerationConfig, PromptSchedule or None, the STREAM_OPTIONS values,
    the demo settings applied), after the preflight checks; bad input raises. Shared with `serve`."""
    from ..config import resolve_seed
    from ..pipeline.preflight import preflight  # torch-free: only the producer loads the model
    from ..pipeline.resolve import DEMO_NAME, demo_kind, is_trained_demo

    stream = {k: options.pop(k) for k in STREAM_OPTIONS}
    if stream.pop("forever"):
        options["times"] = 0
    schedule = schedule_from_options({k: options.pop(k) for k in PROMPT_OPTIONS})
    if options["prompt"] is None:
        if schedule is None:
            raise ConfigError("-p/--prompt: missing; give a prompt, or a --prompts-file")
        options["prompt"] = schedule.entries[0].prompt  # names the output; the file decides every chunk
    if options["model_2d"] is None:  # the offline random demo pairs with the offline text-to-image demo
        options["model_2d"] = DEMO_NAME if demo_kind(options["model"]) == "random" else DEFAULT_MODEL_2D
    # precedence of the size: -WI/-HI given > the init image's (video's) size > the demo's > defaults
    sized = _size_from_init(options)
    demo_applied = (_demo_defaults(options, skip=("width", "height") if sized else ())
                    if is_trained_demo(options["model"]) else [])
    config = resolve_seed(config_from_options(options))
    preflight(config)  # bad input fails here, in a second, before the producer process starts
    return config, schedule, stream, demo_applied


def _run(**options) -> None:
    """Generate video with the original inference.py flags; writes <output-dir>/<prompt>_<id>.mp4."""
    _setup_logging()
    config, schedule, stream, demo_applied = build_run_config(options)
    try:
        os.makedirs(config.output_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"-o/--output-dir: cannot create {config.output_dir!r} ({e.strerror}); choose a writable folder") from None
    stem = output_stem(config)
    path = os.path.join(config.output_dir, stem + ".mp4")
    save_init_to = os.path.join(config.output_dir, stem + "_init.png") if config.save_init else None
    sinks, run_options = prepare_stream(config, path, save_init_to=save_init_to, schedule=schedule, **stream)
    if demo_applied:  # only now: input refused above gets its one error line and nothing else
        logger.info("demo model settings (flags not given): %s", ", ".join(demo_applied))
    from ..runtime.loop import run as run_stream

    status = run_stream(config, sinks, run_options)
    if not stream["sinks"] and os.path.exists(path):
        click.echo(path)  # only for the default file sink: with --sink, stdout may carry the video
    if status:
        sys.exit(status)


run = _run
for _decorator in reversed(RUN_OPTIONS):
    run = _decorator(run)
run = main.command("run", context_settings={"show_default": True})(run)


def _add_subcommands() -> None:
    from ..cluster.command import make_cluster_command
    from ..control import control_command
    from ..service.command import make_serve_command
    from ..sinks.receiver import subscribe_command

    main.add_command(subscribe_command)
    main.add_command(control_command)
    main.add_command(make_serve_command(RUN_OPTIONS, build_run_config, _setup_logging))
    main.add_command(make_cluster_command(_setup_logging))


_add_subcommands()


if __name__ == "__main__":
    main()

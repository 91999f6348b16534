"""The Class3D job's parameters, each range-checked; the canonical benchmark only by name.

A submission names its own data (project, particles, reference, particle diameter) or asks for
the EMPIAR-10028 benchmark's with ``preset=benchmark``: the dataclass's defaults are that
benchmark, and a lab that forgot ``--particles`` must be told so, not have the benchmark's
particles classified into the benchmark's project on its bill.

Every relion_refine flag a user may change is a named parameter with the values it accepts; a
bad value is refused with one message naming the parameter, the value and what is accepted. Flags
without a parameter may be passed as ``extra_flags``, but only flags relion_refine knows (RELION
itself only warns about unknown flags, so a typo would silently run a different job), and never
a flag the template sets itself (output, GPUs, threads, scratch, pipeline control).
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from relion_spot.relion.preflight import PreflightError, parse_refine_args

from .job_dir import JOB_TYPE


class JobParameterError(ValueError):
    """A job parameter that cannot be used; the message is meant for the user, verbatim."""


_SYM_RE = re.compile(r"^(C[1-9]\d*|Ci|Cs|D[1-9]\d*|T|O|I[1-5]?)$")
_PATH_RE = re.compile(r"^[\w./:+@-]+$", re.ASCII)
"""Paths stay plain ASCII (no spaces or shell characters): they are written into a shell script."""
MAX_PATH_LENGTH = 255
DATA_ROOT = "/data"
"""The shared file system on every node: a job's project lives in a directory under it."""
SCRATCH_ROOT = "/scratch"
"""The node's local NVMe: RELION's --scratch_dir must be there."""


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    whole: bool

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        return f"{kind} from {self.low:g} to {self.high:g}"


RANGES: dict[str, _Range] = {
    "K": _Range(1, 50, True),
    "iter": _Range(1, 200, True),
    "tau2_fudge": _Range(0.1, 100, False),
    "particle_diameter": _Range(1, 10_000, False),
    "ini_high": _Range(1, 1000, False),
    "healpix_order": _Range(0, 6, True),
    "oversampling": _Range(0, 3, True),
    "offset_range": _Range(0, 100, False),
    "offset_step": _Range(0.1, 50, False),
    "random_seed": _Range(0, 2**31 - 1, True),
    "pool": _Range(1, 1000, True),
    "j": _Range(1, 256, True),
}
"""Numeric parameters and the values each accepts."""

SWITCHES: tuple[str, ...] = (
    "firstiter_cc",
    "ctf",
    "flatten_solvent",
    "zero_mask",
    "norm",
    "scale",
    "skip_align",
)
"""Boolean parameters: each is its relion_refine flag, given when true."""

MANAGED_FLAGS: frozenset[str] = frozenset(
    {
        "--o",
        "--continue",
        "--gpu",
        "--cpu",
        "--j",
        "--pool",
        "--scratch_dir",
        "--pipeline_control",
        "--dont_combine_weights_via_disc",
        "--i",
        "--ref",
        "--iter",
        "--K",
        "--auto_refine",
        "--split_random_halves",
    }
    | {f"--{name}" for name in RANGES}
    | {f"--{name}" for name in SWITCHES}
    | {"--sym", "--solvent_mask"}
)
"""Flags the template or a named parameter sets; giving one again as an extra flag is refused."""


@dataclass(frozen=True)
class Class3dParams:
    """relion_refine settings for one Class3D job. Defaults = the EMPIAR-10028 benchmark."""

    particles: str = "Particles/shiny_2sets.star"
    """--i, relative to the project directory."""
    reference: str = "emd_2660.map:mrc"
    """--ref, relative to the project directory."""
    ini_high: float = 60
    iter: int = 25
    tau2_fudge: float = 4
    particle_diameter: float = 360
    K: int = 6
    oversampling: int = 1
    healpix_order: int = 2
    offset_range: float = 5
    offset_step: float = 2
    sym: str = "C1"
    random_seed: int = 0
    pool: int | None = None
    """None: sized to the node (see relion_spot.jobs.class3d.threads_and_pool)."""
    j: int | None = None
    """None: sized to the node (see relion_spot.jobs.class3d.threads_and_pool)."""
    firstiter_cc: bool = True
    ctf: bool = True
    flatten_solvent: bool = True
    zero_mask: bool = True
    norm: bool = True
    scale: bool = True
    skip_align: bool = False
    """Classify without aligning (RELION's --skip_align), e.g. on a refined consensus."""
    solvent_mask: str | None = None
    """--solvent_mask, relative to the project directory (a soft mask on the reference's box
    and pixel size, values 0 to 1; preflight checks all of it). None: RELION's spherical mask
    of particle_diameter."""
    project_dir: str = "/data/relion_benchmark"
    """Where the job runs (--i and --ref are relative to it); on the EFS /data mount."""
    output_dir: str = "Class3D"
    """The job type directory under the project: the job writes to <output_dir>/jobNNN/run_*,
    NNN the project's next RELION job number, claimed by this job (relion_spot.jobs.job_dir)."""
    scratch_dir: str = "/scratch"
    """The node's local NVMe (the node bootstrap mounts the instance store there)."""
    extra_flags: tuple[str, ...] = ()
    """Further relion_refine flags (and values), checked against the flags RELION knows."""
    continue_from: str | None = None
    """A Class3D job of the project to continue, and the iteration to continue from
    (``Class3D/job005:20``; given as ``Class3D/job005``, the controller names that run's newest
    complete iteration). RELION keeps the run's particles, reference, K and symmetry; ``iter`` and
    the options RELION reads again on --continue (CONTINUE_PARAMETERS) may change. The job writes
    to its own new directory, so the run it continues stays as it was."""
    changed: tuple[str, ...] = ()
    """On a continuation, the named parameters to pass again (RELION keeps every other one)."""
    dataset: str | None = None
    """The job's data in S3: ``s3://bucket/prefix/`` (ending in ``/``) holding the set's files,
    or ``s3://bucket/key`` of a tarball. Particles, reference and mask are then paths inside it,
    and every attempt copies it from S3 straight to the node's NVMe (relion_spot.jobs.dataset),
    where RELION reads it; only the job's output goes to the project on /data. None: the data
    is in project_dir and RELION copies the particles from there to scratch_dir."""
    dataset_sha256: str | None = None
    """A tarball's sha256 (64 lowercase hex digits), checked on the node before unpacking."""

    def __post_init__(self) -> None:
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            if value is None and name in ("pool", "j"):
                continue
            _check_number(name, value, allowed)
            if allowed.whole and isinstance(value, float):  # 30.0 from JSON: RELION wants 30
                object.__setattr__(self, name, int(value))
        for name in SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise JobParameterError(
                    f"parameter {name} = {getattr(self, name)!r} is not valid: true or false"
                )
        if not isinstance(self.sym, str) or not _SYM_RE.fullmatch(self.sym):
            raise JobParameterError(
                f"parameter sym = {self.sym!r} is not valid: a point group such as C1, C4, D7, "
                "T, O or I (I1-I5)"
            )
        for name in ("particles", "reference", "project_dir", "output_dir", "scratch_dir"):
            check_path(name, getattr(self, name))
        for name in ("project_dir", "scratch_dir"):
            if not getattr(self, name).startswith("/"):
                raise JobParameterError(
                    f"parameter {name} = {getattr(self, name)!r} is not valid: an absolute path"
                )
        if self.solvent_mask is not None:
            check_path("solvent_mask", self.solvent_mask)
        for name in ("particles", "reference", "solvent_mask"):
            if getattr(self, name) is not None:
                _check_relative(name, getattr(self, name))
        if not JOB_TYPE.fullmatch(self.output_dir):
            raise JobParameterError(
                f"parameter output_dir = {self.output_dir!r} is not valid: one directory name "
                "under the project (a letter, then letters, digits or _; e.g. Class3D)"
            )
        if self.offset_step > self.offset_range and self.offset_range > 0:
            raise JobParameterError(
                f"parameter offset_step = {self.offset_step:g} is not valid: at most "
                f"offset_range ({self.offset_range:g})"
            )
        check_extra_flags(self.extra_flags)
        _check_dataset(self)
        if self.continue_from is not None:
            _check_continuation(self)

    def continued_run(self) -> tuple[str, int | None]:
        """The job directory this job continues, and the iteration (None: not yet named)."""
        assert self.continue_from is not None
        run, _, iteration = self.continue_from.partition(":")
        return run, int(iteration) if iteration else None

    def check_confined(self) -> None:
        """What a submission to the cluster may name: a project under the shared /data (never
        the cluster's own dot-directories there) and scratch on the node's NVMe. (Rendering for
        a test or a benchmark may point elsewhere; the intake always checks this.)"""
        _check_under("project_dir", self.project_dir, DATA_ROOT, "a project directory")
        check_not_reserved("project_dir", self.project_dir)
        _check_under("scratch_dir", self.scratch_dir, SCRATCH_ROOT, "the node's scratch", True)

    def refine_args(self) -> list[str]:
        """The job's own relion_refine flags (no output, GPU, thread or scratch flags)."""
        if self.continue_from is not None:
            return self._continue_args()
        args = ["--i", self.particles, "--ref", self.reference]
        switches = {name: getattr(self, name) for name in SWITCHES}
        if switches["firstiter_cc"]:
            args.append("--firstiter_cc")
        args += ["--ini_high", number_word(self.ini_high)]
        if switches["ctf"]:
            # RELION 5 takes the reference as CTF-corrected; its --ctf_corrected_ref is gone.
            args.append("--ctf")
        args += [
            *("--iter", str(self.iter)),
            *("--tau2_fudge", number_word(self.tau2_fudge)),
            *("--particle_diameter", number_word(self.particle_diameter)),
            *("--K", str(self.K)),
        ]
        for name in ("flatten_solvent", "zero_mask"):
            if switches[name]:
                args.append(f"--{name}")
        if self.solvent_mask is not None:
            args += ["--solvent_mask", self.solvent_mask]
        args += [
            *("--oversampling", str(self.oversampling)),
            *("--healpix_order", str(self.healpix_order)),
            *("--offset_range", number_word(self.offset_range)),
            *("--offset_step", number_word(self.offset_step)),
            *("--sym", self.sym),
        ]
        for name in ("norm", "scale", "skip_align"):
            if switches[name]:
                args.append(f"--{name}")
        args += ["--random_seed", str(self.random_seed)]
        return [*args, *self.extra_flags]

    def _continue_args(self) -> list[str]:
        run, iteration = self.continued_run()
        if iteration is None:
            raise JobParameterError(
                f"parameter continue_from = {self.continue_from!r} names no iteration: give "
                f"{run}:N (the controller fills in the newest complete one when it sees the run)"
            )
        args = [
            "--continue",
            f"{run}/run_it{iteration:03d}_optimiser.star",
            "--iter",
            str(self.iter),
        ]
        for name in self.changed:
            value = getattr(self, name)
            if name in SWITCHES:
                args += [f"--{name}"] if value else []
            elif name == "solvent_mask":
                args += ["--solvent_mask", str(value)]
            else:
                args += [f"--{name}", number_word(value)]
        return [*args, *self.extra_flags]


PARAMETER_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(Class3dParams) if f.name != "changed"
)
CONTINUE_PARAMETERS: tuple[str, ...] = (
    "tau2_fudge", "particle_diameter", "healpix_order", "oversampling", "offset_range",
    "offset_step", "solvent_mask", "skip_align",
)  # fmt: skip
"""Named parameters whose relion_refine option RELION 5 reads again on --continue (its
parseContinue); a test holds them to the list read from RELION's source. --ini_high is read
there only while setting up a multi-body refinement, so it is not among them; skip_align is off
after a --continue unless given again, so the controller passes it when the run had it."""
CONTINUE_FIXED_ALLOWED: tuple[str, ...] = (
    "continue_from", "iter", "project_dir", "output_dir", "scratch_dir", "pool", "j", "extra_flags",
)  # fmt: skip
"""What else a continuation may name: where it runs and how, not what RELION computes."""
_CONTINUE_FROM = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}/job\d{3,6}(:\d{1,3})?$")


DATASET_SOURCE = re.compile(
    r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[\w+@=-][\w./+@=-]*)$", re.ASCII
)
"""An S3 object (a tarball) or a prefix ending in ``/`` (the set's files), with a key a shell
script can carry unquoted."""
MAX_DATASET_LENGTH = 700
"""Keeps the broker's session policy, which names the key twice, within AssumeRole's 2,048
characters."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_dataset(params: Class3dParams) -> None:
    if params.dataset is None:
        if params.dataset_sha256 is not None:
            raise JobParameterError(
                "parameter dataset_sha256 is given without dataset: it checks the tarball "
                "named by dataset (s3://bucket/key)"
            )
        return
    value = params.dataset
    parts = value.split("/")[3:] if isinstance(value, str) else []
    if (
        not isinstance(value, str)
        or len(value) > MAX_DATASET_LENGTH
        or not DATASET_SOURCE.fullmatch(value)
        or any(part in ("", ".", "..") for part in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        raise JobParameterError(
            f"parameter dataset = {str(value)[:80]!r} is not valid: s3://bucket/key of a "
            "tarball, or s3://bucket/prefix/ (ending in /) holding the set's files (ASCII "
            "letters, digits and _ . / + @ = - in the key, no empty, . or .. parts, at most "
            f"{MAX_DATASET_LENGTH} characters)"
        )
    if params.continue_from is not None:
        raise JobParameterError(
            "parameters dataset and continue_from exclude each other: a continuation reads the "
            "run it continues from the project on /data"
        )
    sha = params.dataset_sha256
    if sha is not None and value.endswith("/"):
        raise JobParameterError(
            "parameter dataset_sha256 checks a tarball; dataset names a prefix "
            f"({value[:80]!r}), whose files are checked by size and by reading the STAR and map"
        )
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        raise JobParameterError(
            f"parameter dataset_sha256 = {str(sha)[:80]!r} is not valid: 64 lowercase hex digits"
        )


def dataset_bucket(dataset: str) -> str:
    """The bucket of a checked ``dataset`` value."""
    match = DATASET_SOURCE.fullmatch(dataset)
    assert match is not None, dataset
    return match["bucket"]


def _check_continuation(params: Class3dParams) -> None:
    value = params.continue_from
    if not isinstance(value, str) or not _CONTINUE_FROM.fullmatch(value):
        raise JobParameterError(
            f"parameter continue_from = {str(value)[:60]!r} is not valid: a Class3D job of the "
            "project and optionally its iteration, e.g. Class3D/job005 or Class3D/job005:20"
        )
    _, iteration = params.continued_run()
    if iteration is not None and not 1 <= iteration < params.iter:
        raise JobParameterError(
            f"parameter iter = {params.iter} is not valid when continuing from iteration "
            f"{iteration}: the iteration to stop at, beyond {iteration}"
        )
    from relion_spot.relion.preflight import continue_flags

    rereads = continue_flags()
    for word in params.extra_flags:
        if word.startswith("--") and word not in rereads:
            raise JobParameterError(
                f"parameter extra_flags: {word} cannot change when continuing: RELION keeps the "
                "run's own (it reads again only the options of its parseContinue)"
            )


def check_path(name: str, value: object) -> None:
    """Plain ASCII path text of bounded length that can never be read as a flag."""
    if not isinstance(value, str) or not _PATH_RE.fullmatch(value):
        raise JobParameterError(
            f"parameter {name} = {value!r} is not valid: a path of ASCII letters, digits and "
            "_ . / : + @ - (no spaces or shell characters)"
        )
    if len(value) > MAX_PATH_LENGTH:
        raise JobParameterError(
            f"parameter {name} = {value[:40]!r}... is not valid: at most {MAX_PATH_LENGTH} "
            f"characters ({len(value)} given)"
        )
    if value.startswith("-"):
        raise JobParameterError(
            f"parameter {name} = {value!r} is not valid: a path, not a flag (it starts with -)"
        )


def check_not_reserved(name: str, value: str) -> None:
    """Names starting with . directly under /data are the cluster's own (spot-event logs,
    claims): no job may write there."""
    if value.startswith(DATA_ROOT + "/") and value.split("/")[2].startswith("."):
        raise JobParameterError(
            f"parameter {name} = {value!r} is not valid: names starting with . directly under "
            f"{DATA_ROOT} are the cluster's own"
        )


def _parts(value: str) -> list[str]:
    return value.split("/")


def _check_under(name: str, value: str, root: str, what: str, root_itself: bool = False) -> None:
    """An absolute, normalised path below ``root`` (or ``root`` itself where allowed)."""
    parts = _parts(value)
    normal = value.startswith("/") and all(p not in ("", ".", "..") for p in parts[1:])
    inside = value.startswith(root + "/") or (root_itself and value == root)
    if not (normal and inside):
        where = f"{root} or a directory under it" if root_itself else f"a directory under {root}"
        raise JobParameterError(
            f"parameter {name} = {value!r} is not valid: {what}, {where} "
            "(absolute, no . or .. or empty parts)"
        )


def _check_relative(name: str, value: str) -> None:
    """A file inside the project: relative, without . or .. or empty parts."""
    path = value.split(":", 1)[0] if name == "reference" else value
    if path.startswith("/") or any(p in ("", ".", "..") for p in _parts(path)):
        raise JobParameterError(
            f"parameter {name} = {value!r} is not valid: a file inside the project directory "
            "(relative, no . or .. or empty parts)"
        )


def number_word(value: float) -> str:
    return f"{value:g}"


def _check_number(name: str, value: object, allowed: _Range) -> None:
    accepted = allowed.describe()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobParameterError(f"parameter {name} = {value!r} is not valid: {accepted}")
    # Range first: a huge integer overflows float(), and NaN compares false both ways.
    shown: object = value
    if isinstance(value, int) and abs(value) >= 10**12:
        shown = f"<a {round(value.bit_length() * 0.30103)}-digit number>"
    if not allowed.low <= value <= allowed.high:
        raise JobParameterError(f"parameter {name} = {shown!r} is not valid: {accepted}")
    if allowed.whole and not float(value).is_integer():
        raise JobParameterError(f"parameter {name} = {shown!r} is not valid: {accepted}")


def check_extra_flags(extra: Sequence[str]) -> None:
    """Refuse unknown or misspelt relion_refine flags, and flags the template sets itself."""
    if isinstance(extra, str):
        raise JobParameterError(
            f"parameter extra_flags = {extra!r} is not valid: a list of flags and values"
        )
    try:
        parsed = parse_refine_args(list(extra))
    except PreflightError as error:
        raise JobParameterError(f"parameter extra_flags: {error}") from None
    for flag in parsed:
        if flag in MANAGED_FLAGS:
            name = flag.removeprefix("--")
            how = (
                f"use the parameter {name}"
                if name in PARAMETER_NAMES
                else "the job template sets it"
            )
            raise JobParameterError(f"parameter extra_flags: {flag} may not be given here: {how}")
        for word in (flag, parsed[flag] or ""):
            if word and shlex.quote(word) != word and not _PATH_RE.fullmatch(word):
                raise JobParameterError(
                    f"parameter extra_flags: {flag} {word!r} has characters a job script cannot "
                    "carry safely (spaces or shell characters)"
                )
        if flag in FILE_FLAGS and parsed[flag] is not None:
            _check_relative(f"extra_flags {flag}", str(parsed[flag]))


FILE_FLAGS: frozenset[str] = frozenset(
    {"--solvent_mask2", "--tau", "--lowpass_mask", "--multibody_masks", "--fn_body_masks"}
)
"""Extra flags whose value is a file RELION reads: inside the project, as the named paths are."""

_ALIASES = {"i": "particles", "ref": "reference"}

PRESET = "preset"
"""The one mapping key that is not a parameter: which named set of defaults the job starts from."""
PRESETS: tuple[str, ...] = ("benchmark",)
"""``benchmark``: EMPIAR-10028 as the published benchmark ran it (the dataclass's defaults)."""
REQUIRED: tuple[str, ...] = ("project_dir", "particles", "reference", "particle_diameter")
"""What only the lab knows about its data; without a preset, each must be given."""


def _coerce(name: str, value: object) -> Any:
    """Text from a command line or context → the parameter's type (numbers, switches, lists)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name in SWITCHES:
        lowered = text.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        return value
    if name == "extra_flags":
        return tuple(shlex.split(text))
    if name in RANGES:
        try:
            return (
                int(text)
                if RANGES[name].whole and re.fullmatch(r"[+-]?\d+", text)
                else (float(text))
            )
        except ValueError:
            return value
    return text


def from_mapping(values: Mapping[str, object]) -> Class3dParams:
    """Parameters from names (e.g. a submit command's key=value pairs); unknown names refused,
    and the lab's own data named unless ``preset=benchmark`` asks for the benchmark's."""
    given: dict[str, Any] = {}
    preset: object = None
    for key, value in values.items():
        name = _ALIASES.get(key.removeprefix("--"), key.removeprefix("--"))
        if name == PRESET:
            preset = value
            continue
        if name not in PARAMETER_NAMES:
            close = difflib.get_close_matches(name, (*PARAMETER_NAMES, PRESET), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            shown = repr(key) if len(key) <= 60 else f"{key[:57]!r}..."
            raise JobParameterError(
                f"no job parameter {shown}; {hint}parameters are: "
                + ", ".join((*PARAMETER_NAMES, PRESET))
            )
        if name in given:
            raise JobParameterError(
                f"parameter {name} is given twice (as {key!r} and another spelling): give it once"
            )
        given[name] = _coerce(name, value)
    if preset is not None and preset not in PRESETS:
        shown = repr(preset) if len(repr(preset)) <= 60 else f"{repr(preset)[:57]}..."
        raise JobParameterError(
            f"parameter preset = {shown} is not valid: one of {', '.join(PRESETS)} (or none, "
            "naming the data: " + ", ".join(REQUIRED) + ")"
        )
    if "extra_flags" in given and isinstance(given["extra_flags"], list):
        given["extra_flags"] = tuple(str(w) for w in given["extra_flags"])
    if given.get("continue_from") is not None:
        return _continuation(given, preset)
    params = Class3dParams(**given)  # a bad value is named first, then what is missing
    missing = [name for name in REQUIRED if name not in given]
    if preset is None and missing:
        raise JobParameterError(
            "the job's own data must be named: "
            + ", ".join(f"{name} (--{name.replace('_', '-')})" for name in missing)
            + " missing; or give preset=benchmark (--preset benchmark) for the EMPIAR-10028 "
            "benchmark's"
        )
    return params


def _continuation(given: dict[str, Any], preset: object) -> Class3dParams:
    """A job continuing another run: only what RELION reads again may be named."""
    if preset is not None:
        raise JobParameterError(
            "parameters preset and continue_from exclude each other: a continuation takes its "
            "data and settings from the run it continues"
        )
    for name in given:
        if name not in CONTINUE_PARAMETERS and name not in CONTINUE_FIXED_ALLOWED:
            raise JobParameterError(
                f"parameter {name} cannot change when continuing {given['continue_from']}: "
                "RELION keeps the run's own; what may change: iter, "
                + ", ".join(CONTINUE_PARAMETERS)
            )
    missing = [name for name in ("project_dir", "iter") if name not in given]
    if missing:
        raise JobParameterError(
            "a continuation must name "
            + " and ".join(f"{name} (--{name.replace('_', '-')})" for name in missing)
            + ": the project, and the iteration to stop at"
        )
    given = {name: value for name, value in given.items() if value is not None}
    changed = tuple(name for name in CONTINUE_PARAMETERS if name in given)
    return Class3dParams(**given, changed=changed)

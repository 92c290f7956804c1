"""The run's position policy: the RoPE parameters the model trains with at each length.

One explicit choice per run, expressed through the model config's own `rope_parameters` (Hugging Face's
`rope_type`s), and a pure function of the length trained at, so a resumed run needs no extra state:

    extrapolate   (the default) the model's RoPE unchanged at every length: GrowLength's reading.
    rope_theta    a new base from a given length on: '500000' for every stage, '8192:500000' from 8192
                  (the base raise Llama 3, Qwen and Dataset Decomposition use for longer contexts).
    yarn          rope_scaling 'yarn:2048': at every length L beyond 2048, YaRN with factor L / 2048 over
                  an original context of 2048 ('yarn' alone: the context the --init-from model was
                  trained to).

Worked example, an 8k extension of a model trained to 2,048 with rope_theta '8192:500000':
    seq_len 2048 -> {'rope_type': 'default', 'rope_theta': 10000.0}
    seq_len 8192 -> {'rope_type': 'default', 'rope_theta': 500000.0}
and with rope_scaling 'yarn:2048' instead:
    seq_len 4096 -> {'rope_type': 'yarn', 'rope_theta': 10000.0, 'factor': 2.0,
                     'original_max_position_embeddings': 2048}
"""

from growlength.errors import GrowLengthError

YARN_KEYS = ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow")


def parse_rope_theta(text: str | None) -> tuple[tuple[int, float], ...]:
    """'500000' -> ((0, 500000.0),); '4096:1e6,8192:5e6' -> ((4096, 1e6), (8192, 5e6)): each base holds
    from its length on. None or '' -> (): the model's own base throughout."""
    if not text:
        return ()
    steps = []
    for item in str(text).split(","):
        length, sep, theta = item.strip().rpartition(":")
        try:
            step = (int(length) if sep else 0, float(theta))
        except ValueError:
            raise GrowLengthError(
                f"cannot read rope_theta {text!r}: write THETA, or LENGTH:THETA,... e.g. 8192:500000"
            ) from None
        if step[0] < 0 or not step[1] > 0:
            raise GrowLengthError(f"rope_theta {text!r}: lengths must be at least 0 and bases positive")
        steps.append(step)
    if [s[0] for s in steps] != sorted({s[0] for s in steps}):
        raise GrowLengthError(f"rope_theta {text!r}: give each length once, shortest first")
    return tuple(steps)


def parse_rope_scaling(text: str) -> tuple[str, int | None]:
    """'none' -> ('none', None); 'yarn' -> ('yarn', None: the init model's context); 'yarn:2048' ->
    ('yarn', 2048)."""
    mode, sep, original = text.partition(":")
    if mode not in ("none", "yarn") or (mode == "none" and sep):
        raise GrowLengthError(f"rope_scaling must be none, yarn or yarn:ORIGINAL_LENGTH, got {text!r}")
    if not sep:
        return mode, None
    if not original.isdigit() or int(original) < 2:
        raise GrowLengthError(f"rope_scaling {text!r}: the original length must be an integer of at least 2")
    return mode, int(original)


def rope_parameters_at(
    base: dict, seq_len: int, *, thetas: tuple[tuple[int, float], ...] = (), yarn_original: int | None = None
) -> dict:
    """The model's RoPE parameters (`base`, its `rope_parameters`) for training at seq_len: the base of
    the last `thetas` step at or below seq_len, and YaRN with factor seq_len / yarn_original beyond it."""
    params = dict(base)
    for from_len, theta in thetas:
        if seq_len >= from_len:
            params["rope_theta"] = theta
    if yarn_original is None:
        return params
    params = {k: v for k, v in params.items() if k not in YARN_KEYS}
    if seq_len > yarn_original:
        factor = seq_len / yarn_original
        params.update(rope_type="yarn", factor=factor, original_max_position_embeddings=yarn_original)
    else:
        params["rope_type"] = "default"
    return params

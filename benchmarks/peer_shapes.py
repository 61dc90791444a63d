"""The token and expert shapes of the peer benchmark, for every benchmark
that times `MoEDense` at them (`bench_peers.py`, `bench_expert_loop.py`):
tokens `(batch, seq, features)`, expert hidden size, the n and k to sweep,
and the timing passes."""


def add_shape_arguments(parser):
    """Adds the shape and timing options to `parser`."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one pass (smoke test)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384, help="MoE expert hidden size")
    parser.add_argument("--experts", default="8,64,256")
    parser.add_argument("--topk", default="1,2")
    parser.add_argument("--steps", type=int, default=5, help="timed calls per pass")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes")


def resolve_shape_arguments(args, quick_experts, quick_topk):
    """Applies `--quick` (tiny tokens, `quick_experts` and `quick_topk`, one
    short pass) and turns `--experts` and `--topk` into lists of ints."""
    if args.quick:
        args.batch, args.seq, args.features, args.hidden = 2, 16, 8, 12
        args.experts, args.topk, args.steps, args.warmup, args.repeats = (
            quick_experts, quick_topk, 2, 1, 1)
    args.experts = [int(v) for v in args.experts.split(",")]
    args.topk = [int(v) for v in args.topk.split(",")]
    return args

"""``dahp index build|add|info`` and ``dahp search``: the command line over :class:`~dahp.index.Index`.

Handlers take the parsed arguments, print, and raise DahpError for user errors (the
``dahp`` entry point prints those as one line); option values are checked by the API.
The index modules are imported inside the handlers, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DahpError
from ..options import DefaultsHelpFormatter, add_runtime_options, add_source_options, positive_int
from .sharding import DEFAULT_CHUNK_SIZE, Shard

if TYPE_CHECKING:
    from .store import Hit, Index

Handler = Callable[[argparse.Namespace], None]
CommandFactory = Callable[[str, Handler, str], argparse.ArgumentParser]

SOURCE_HELP = "images to index: 'digits', an image folder ROOT/<class>/<image>, a .tar.gz of one, a list file or a .csv"


def _shard_option(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except DahpError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_encoding_options(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    add_runtime_options(parser)
    parser.add_argument("--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE,
                        help="images per chunk committed to the work folder .NAME.ingest beside the index: a killed "
                             "run loses at most the chunk in flight, and the same command run again resumes")
    parser.add_argument("--shard", type=_shard_option, default=None, metavar="RANK/WORLD",
                        help="encode only the chunks i with i %% WORLD == RANK, for machines sharing the disk; "
                             "shard 0 waits for the others' chunks and writes the index "
                             "(default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _encoding_options(args: argparse.Namespace, shard: Shard) -> dict[str, object]:
    under_torchrun = args.shard is None and shard.world > 1  # one terminal: only rank 0 draws a bar
    return {"batch_size": args.batch_size, "workers": args.workers, "skip_bad": args.skip_bad,
            "image_root": args.image_root, "cache_dir": args.cache_dir, "chunk_size": args.chunk_size,
            "progress": not (args.quiet or under_torchrun and shard.rank)}


def _encode_shard(args: argparse.Namespace, shard: Shard, model: Path, index: Path) -> None:
    """Shards other than 0 encode their chunks and leave; shard 0 writes the index."""
    from .ingest import IngestOptions, encode_shard, work_folder

    started = time.perf_counter()
    encoded = encode_shard(model, args.images, index, shard, IngestOptions(**_encoding_options(args, shard)),
                           device=args.device)
    print(f"shard {shard}: encoded {encoded} images of {args.images} in {time.perf_counter() - started:.1f} s "
          f"into {work_folder(index)}; shard 0 writes the index")


def _report_added(index: Index, added: int, started: float) -> None:
    source = index.info()["sources"][-1]
    if source["skipped"]:
        path, reason = source["skipped"][0]
        print(f"skipped {len(source['skipped'])} unreadable images (--skip-bad), e.g. {path}: {reason}",
              file=sys.stderr)
    print(f"indexed {added} images of {source['spec']} in {time.perf_counter() - started:.1f} s -> {index.path} "
          f"({index.count} images, {index.bits}-bit codes)")


def cmd_index_build(args: argparse.Namespace) -> None:
    from .store import Index

    shard = args.shard or Shard.from_environment()
    if shard.rank:
        _encode_shard(args, shard, Path(args.model), Path(args.output))
        return
    started = time.perf_counter()
    index = Index.build(args.model, args.images, args.output, device=args.device, backend=args.backend, uri=args.uri,
                        shards=shard.world, **_encoding_options(args, shard))
    _report_added(index, index.count, started)


def cmd_index_add(args: argparse.Namespace) -> None:
    from ..hasher import MODEL_FILE
    from .store import Index

    shard = args.shard or Shard.from_environment()
    if shard.rank:
        _encode_shard(args, shard, Path(args.index) / MODEL_FILE, Path(args.index))
        return
    started = time.perf_counter()
    index = Index.load(args.index, device=args.device)
    added = index.add(args.images, model=args.model, shards=shard.world, **_encoding_options(args, shard))
    _report_added(index, added, started)


def cmd_index_info(args: argparse.Namespace) -> None:
    from .store import Index

    info = Index.load(args.index).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    backend = info["backend"]
    print(f"index {info['path']}: {info['count']} images, {info['bits']}-bit codes, format version "
          f"{info['format_version']}, generation {info['generation']}")
    print(f"model fingerprint {info['model_fingerprint']}")
    if backend["name"] == "faiss":
        print(f"backend faiss {backend['faiss_version']}: codes padded to {backend['padded_bytes']} bytes, "
              f"{backend['hash_tables']} hash table(s) of {backend['hash_key_bits']}-bit keys")
    else:
        print(f"backend {backend['name']}: " + ", ".join(f"{key} {value}" for key, value in backend.items()
                                                           if key != "name"))
    print(f"created {info['created']}, updated {info['updated']}")
    for source in info["sources"]:
        print(f"  + {source['added']} images of {source['spec']} at {source['at']}"
              f" ({len(source['skipped'])} skipped)")
    for role, record in info["files"].items():
        print(f"  {role:<9} {record['name']:<24} {record['bytes']:>12} bytes  sha256 {record['sha256']}")


def _hit_json(rank: int, hit: Hit) -> dict[str, object]:
    return {"rank": rank, "distance": hit.distance, "id": hit.id, "path": hit.path, "label": hit.label}


def cmd_search(args: argparse.Namespace) -> None:
    from .store import Index

    index = Index.load(args.index, device=args.device)
    started = time.perf_counter()
    codes = index.encode_images(args.queries)
    encoded = time.perf_counter()
    k, radius = (None, args.radius) if args.radius is not None else (args.top, None)
    results = index.search(codes, k=k, radius=radius)
    timing = {"encode_ms": (encoded - started) * 1e3, "search_ms": (time.perf_counter() - encoded) * 1e3}
    if args.json:
        print(json.dumps({"queries": [{"query": query, "hits": [_hit_json(rank, hit) for rank, hit in
                                                                 enumerate(hits, 1)]}
                                      for query, hits in zip(args.queries, results)], **timing}, indent=2))
        return
    wanted = f"within distance {radius}" if radius is not None else f"top {k}"
    for query, hits in zip(args.queries, results):
        print(f"{query}: {len(hits)} hits ({wanted})")
        print(f"{'rank':>6} {'distance':>8} {'id':>8}  path  label")
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:>6} {hit.distance:>8} {hit.id:>8}  {hit.path}  {hit.label}")
    print(f"encode {timing['encode_ms']:.1f} ms, search {timing['search_ms']:.1f} ms ({len(args.queries)} queries)")


def add_index_commands(command: CommandFactory) -> None:
    """Add ``index`` (build, add, info) and ``search`` with the CLI's ``command(name, handler, help)`` factory."""
    index = command("index", lambda args: None, "build, extend and describe search indexes")
    actions = index.add_subparsers(dest="index_command", required=True, metavar="COMMAND")

    def subcommand(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text,
                                 formatter_class=DefaultsHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    build = subcommand("build", cmd_index_build, "encode a collection with a model into a new index directory")
    build.add_argument("model", help="model file (model.dahp); the index keeps a copy")
    build.add_argument("images", help=SOURCE_HELP)
    build.add_argument("-o", "--output", required=True, help="index directory (an existing index is replaced)")
    build.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                       help="where the codes live: faiss (in the index directory, default) or a Milvus collection")
    build.add_argument("--uri", default=None,
                       help="milvus backend: a server (http://host:19530) or a Milvus Lite file (*.db); "
                            "default: a Lite file OUTPUT.milvus.db beside the index directory")
    _add_encoding_options(build)

    add = subcommand("add", cmd_index_add, "append images to an index, encoded with the index's own model")
    add.add_argument("index", help="index directory")
    add.add_argument("images", help=SOURCE_HELP)
    add.add_argument("--model", default=None, help="fail unless the index was built with this model file")
    _add_encoding_options(add)

    info = subcommand("info", cmd_index_info, "check an index and describe it: counts, model, files, checksums")
    info.add_argument("index", help="index directory")
    info.add_argument("--json", action="store_true", help="print JSON")

    search = command("search", cmd_search, "find the indexed images nearest to query images (Hamming distance)")
    search.add_argument("index", help="index directory (dahp index build)")
    search.add_argument("queries", nargs="+", metavar="QUERY", help="query image files")
    limit = search.add_mutually_exclusive_group()
    limit.add_argument("--top", type=int, default=10, metavar="K", help="the K nearest (default 10)")
    limit.add_argument("--radius", type=int, default=None, metavar="R", help="every image within Hamming distance R")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")

"""`python -m clients classify`: classify texts with a BERT ensemble served by Triton.

    python -m clients classify "what a lovely day" "my flight got cancelled again"
    python -m clients classify --file texts.txt --protocol grpc --json
    cat texts.txt | python -m clients classify -

The client library is clients/client.py (`Classifier`), re-exported here.
"""
from __future__ import annotations

import json
import sys

from clients.client import (DEFAULT_MODEL, PROTOCOLS, Classifier, ClientError, InferenceFailed, Prediction,
                            ServerBusy, ServerUnreachable, UnknownModel, discover_ensembles, is_retryable,
                            normalize_url)

__all__ = [  # the client library, re-exported; then this command's own
    "DEFAULT_MODEL", "PROTOCOLS", "Classifier", "ClientError", "InferenceFailed", "Prediction", "ServerBusy", "ServerUnreachable",
    "UnknownModel", "discover_ensembles", "is_retryable", "normalize_url",
    "add_arguments", "read_texts", "format_table", "main"]


def add_arguments(p):
    p.add_argument("texts", nargs="*", help="texts to classify; '-' reads one text per line from stdin")
    p.add_argument("--file", help="a text file, one text per line (blank lines skipped, and counted)")
    p.add_argument("--url", help="server address (default 127.0.0.1:8000 for http, :8001 for grpc)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"ensemble name (default {DEFAULT_MODEL})")
    p.add_argument("--retries", type=int, default=4,
                   help="retries on connection errors and refusals of a busy server (default 4)")
    p.add_argument("--retry-time", type=float, default=60.0, help="seconds of retrying at most, in all (default 60)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--admin-key", help="key for the restricted APIs (default $TRITON_ADMIN_KEY or .triton/admin_key)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="say when retrying")


def read_texts(args, stdin=None) -> list[str]:
    stdin = stdin or sys.stdin
    if args.file and args.texts:
        raise ClientError("give texts as arguments or --file, not both")
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ClientError(f"cannot read --file {args.file}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ClientError(f"--file {args.file} is not UTF-8 text (byte {e.start})") from None
    elif args.texts == ["-"]:
        lines = stdin.read().splitlines()
    else:
        lines = list(args.texts)
    texts = [t for t in lines if t.strip()]
    if len(texts) < len(lines):
        print(f"note: skipped {len(lines) - len(texts)} blank line(s)", file=sys.stderr)
    if not texts:
        raise ClientError("no texts to classify: pass them as arguments, --file FILE, or '-' for stdin")
    return texts


def format_table(texts, predictions, labels) -> str:
    width = min(60, max(len(t) for t in texts))
    head = f"{'text':<{width}}  {'label':<12}" + "".join(f"  {n[:12]:>12}" for n in labels)
    rows = [head, "-" * len(head)]
    for t, p in zip(texts, predictions):
        t = t.replace("\n", " ")
        t = t if len(t) <= width else t[:width - 3] + "..."
        rows.append(f"{t:<{width}}  {p.label:<12}" + "".join(f"  {p.probabilities[n]:>12.4f}" for n in labels))
    return "\n".join(rows)


def main(args) -> int:
    texts = read_texts(args)
    with Classifier(args.url, args.protocol, args.model, retries=args.retries, timeout=args.timeout,
                    admin_key=args.admin_key, verbose=args.verbose, retry_time=args.retry_time) as clf:
        predictions = clf.classify(texts)
        if args.json:
            for t, p in zip(texts, predictions):
                print(json.dumps({"text": t, **p.to_dict()}, ensure_ascii=False))
        else:
            print(format_table(texts, predictions, clf.labels))
    return 0

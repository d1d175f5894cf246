"""A deterministic, realistic JavaScript bundle, and the same bundle after a small deploy.

For the bytes-on-the-wire benchmark (benchmarks/bytes.py) and the compression tests: a bundler's
output is many small modules of ordinary code (functions, object literals, string messages,
numbers, comments), with a vocabulary that repeats the way real identifiers do, but no two
functions alike. Random bytes would not compress at all and one repeated block would compress
absurdly well; neither says anything about a real site. `deploy` changes a few functions, as a
bug-fix release does, and renames nothing else.
"""

from __future__ import annotations

import random

WORDS = (
    "user", "account", "session", "token", "cart", "item", "price", "total", "order", "invoice",
    "payment", "card", "address", "shipping", "country", "region", "locale", "message", "error",
    "warning", "notice", "label", "title", "body", "header", "footer", "menu", "button", "input",
    "field", "form", "value", "state", "props", "render", "update", "mount", "unmount", "effect",
    "cache", "store", "fetch", "request", "response", "status", "retry", "timeout", "delay",
    "queue", "worker", "event", "target", "listener", "handler", "callback", "promise", "result",
    "data", "list", "index", "count", "offset", "limit", "page", "filter", "sort", "search",
    "query", "route", "path", "params", "history", "router", "view", "model", "schema", "field",
    "validate",
)
VERBS = (
    "get", "set", "load", "save", "parse", "format", "build", "create", "remove", "toggle", "apply",
    "reset", "compute", "resolve",
)


def _name(rnd: random.Random) -> str:
    parts = [rnd.choice(VERBS), rnd.choice(WORDS).title()]
    if rnd.random() < 0.5:
        parts.append(rnd.choice(WORDS).title())
    return "".join(parts)


def _statement(rnd: random.Random, number: int, depth: int = 0) -> str:
    """One statement of a function body; `number` makes the names it declares unique there, so
    the bundle parses (a module script: no name declared twice in one scope)."""
    pad = "  " * (depth + 1)
    kind = rnd.random()
    a, b = rnd.choice(WORDS), rnd.choice(WORDS)
    if kind < 0.25:
        return f"{pad}const {a}_{number} = {_name(rnd)}({b}, {rnd.randint(0, 4096)});"
    if kind < 0.4:
        return (f"{pad}if ({a} && {a}.{b} !== undefined) {{\n{_statement(rnd, number * 10 + 1, depth + 1)}\n"
                f"{pad}}}")
    if kind < 0.55:
        words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 8)))
        return f"{pad}throw new Error(`{words}: ${{{a}}}`);" if rnd.random() < 0.3 else \
            f"{pad}console.warn('{words}', {a});"
    if kind < 0.7:
        keys = ", ".join(f"{rnd.choice(WORDS)}: {rnd.choice(WORDS)}.{rnd.choice(WORDS)}"
                         for _ in range(rnd.randint(2, 5)))
        return f"{pad}{a} = {{ ...{a}, {keys} }};"
    if kind < 0.8:
        return (f"{pad}for (const {a} of {b}s) {{\n{_statement(rnd, number * 10 + 1, depth + 1)}\n{pad}}}")
    if kind < 0.9:
        return f"{pad}// {' '.join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 10)))}"
    return f"{pad}return await {_name(rnd)}({a}, {{ {b}: {rnd.random():.4f} }});"


def _function(index: int, seed: int) -> str:
    rnd = random.Random(index * 7919 + seed)
    args = ", ".join(sorted({rnd.choice(WORDS) for _ in range(rnd.randint(1, 3))}))
    body = "\n".join(_statement(rnd, n) for n in range(rnd.randint(3, 9)))
    return (f"/* module {index}: {rnd.choice(WORDS)} {rnd.choice(WORDS)} */\n"
            f"export async function {_name(rnd)}_{index}({args}) {{\n{body}\n}}\n")


def bundle(size: int = 300 * 1024, seed: int = 0) -> bytes:
    """About `size` bytes of bundle (whole functions, so a little over)."""
    out, total, i = [], 0, 0
    while total < size:
        text = _function(i, seed)
        out.append(text)
        total += len(text)
        i += 1
    return "".join(out).encode()


def deploy(old: bytes, changed: int = 5, seed: int = 1) -> bytes:
    """`old` with `changed` of its functions rewritten (spread through the file) and one added."""
    functions = old.decode().split("/* module ")
    head, functions = functions[0], ["/* module " + f for f in functions[1:]]
    step = max(1, len(functions) // (changed + 1))
    for n in range(1, changed + 1):
        index = n * step
        functions[index] = _function(index, seed + 1000 + n)
    functions.append(_function(len(functions), seed + 2000))
    return (head + "".join(functions)).encode()

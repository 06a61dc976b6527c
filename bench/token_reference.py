#!/usr/bin/env python3
"""Counts the input tokens of chat requests as OpenAI's own tokenizer does,
for comparing mkt's estimates with a reference (tests/estimate.rs embeds
its output).

    python3 bench/token_reference.py RANKS_DIR ENCODING < prompts.jsonl

stdin holds compiled prompts, `{"messages": [{"role", "content"}]}` one
after another (what `mkt show TARGET --prompt --json` prints); each line of
stdout is one's count: the tokens of every role and content, plus OpenAI's chat framing (3
per message, 3 to prime the answer). Needs `pip install tiktoken`; the rank
file (`ENCODING.tiktoken`, e.g. the one the tiktoken-rs crate ships) is read
from RANKS_DIR and checked against the SHA-256 tiktoken pins for it, so no
download is needed.
"""
import json
import sys

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext import openai_public


def encoding(ranks_dir, name):
    def local(url, expected_hash=None):
        path = f"{ranks_dir}/{url.rsplit('/', 1)[1]}"
        return load_tiktoken_bpe(path, expected_hash=expected_hash)

    openai_public.load_tiktoken_bpe = local
    return tiktoken.Encoding(**getattr(openai_public, name)())


def main():
    enc = encoding(sys.argv[1], sys.argv[2])
    text, decoder, at = sys.stdin.read(), json.JSONDecoder(), 0
    count = lambda s: len(enc.encode_ordinary(s))
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        prompt, at = decoder.raw_decode(text, at)
        print(3 + sum(3 + count(m["role"]) + count(m["content"]) for m in prompt["messages"]))


if __name__ == "__main__":
    main()

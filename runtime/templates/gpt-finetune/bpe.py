"""A byte-level BPE trained offline on the job's own text, as a tiktoken Encoding.

tiktoken's published encodings (gpt2, cl100k_base...) are downloaded on first use, and jobs have no
network; Debian's python3-tiktoken ships none of their files. So the merges are learnt here, the way
GPT-2's were (the same pre-tokenisation pattern, merges of the most frequent adjacent pair), and handed
to tiktoken, whose Rust encoder then tokenises the corpus in well under a second.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import regex
import tiktoken

# GPT-2's pre-tokenisation: merges never cross these pieces (words with their leading space, numbers,
# punctuation runs, whitespace).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"


def train_ranks(text: str, vocab_size: int) -> dict[bytes, int]:
    """Mergeable ranks of a byte-level BPE with `vocab_size` tokens (256 bytes, then merges in order).

    Counts each distinct piece once with its frequency, and after each merge updates only the pair counts
    of the pieces that held the merged pair, so a megabyte of text trains in about a second. Ties go to
    the pair whose bytes sort first, so the same text always gives the same ranks.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (one token a byte), got {vocab_size}")
    ranks = {bytes([b]): b for b in range(256)}
    token_bytes = [bytes([b]) for b in range(256)]
    pieces = Counter(regex.findall(GPT2_PATTERN, text))
    words = [list(piece.encode("utf-8")) for piece in pieces]
    freqs = list(pieces.values())
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(w)

    while len(ranks) < vocab_size and pair_counts:
        top = max(pair_counts.values())
        best = min((p for p, c in pair_counts.items() if c == top), key=lambda p: token_bytes[p[0]] + token_bytes[p[1]])
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        new_id = ranks.get(merged)
        if new_id is None:
            new_id = ranks[merged] = len(token_bytes)
            token_bytes.append(merged)
        for w in where.pop(best):
            word, freq = words[w], freqs[w]
            for pair in zip(word, word[1:]):
                pair_counts[pair] -= freq
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
            for pair in zip(out, out[1:]):
                pair_counts[pair] += freq
                where[pair].add(w)
    return ranks


def encoding(ranks: dict[bytes, int], name: str = "shakespeare-bpe") -> tiktoken.Encoding:
    """A tiktoken Encoding from learnt ranks, with GPT-2's pattern and an end-of-text token after them."""
    return tiktoken.Encoding(
        name=name,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: len(ranks)},
    )

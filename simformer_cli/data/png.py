"""A small deterministic PNG encoder for the synthetic dataset.

zlib builds (zlib, zlib-ng) compress the same data to different bytes, so PNGs written through
Pillow or OpenCV are not byte-identical across machines. This encoder writes its own deflate
stream (a "sub" filter and a fixed code for RGB images, run-length matches for label maps), so the
same pixels always give the same file. Pillow and OpenCV read the result as usual.
"""

from __future__ import annotations

import heapq
import struct
import zlib
from dataclasses import dataclass

import numpy as np

_LENGTH_BASES = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
                 131, 163, 195, 227, 258)  # fmt: skip
_LENGTH_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0)
_CODE_LENGTH_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _length_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each match length 0..258: deflate length symbol, its extra bits and their value."""
    symbol, extra_bits, extra_value = (np.zeros(259, dtype=np.int64) for _ in range(3))
    for code, (base, bits) in enumerate(zip(_LENGTH_BASES, _LENGTH_EXTRA)):
        top = base if code == 28 else min(base + (1 << bits) - 1, 257)  # 258 has its own symbol
        for length in range(base, top + 1):
            symbol[length], extra_bits[length], extra_value[length] = 257 + code, bits, length - base
    return symbol, extra_bits, extra_value


_LENGTH_SYMBOL, _LENGTH_EXTRA_BITS, _LENGTH_EXTRA_VALUE = _length_tables()
_POWERS_OF_2 = 2 ** np.arange(40, dtype=np.int64)
_REVERSED_15 = np.array([int(f"{i:015b}"[::-1], 2) for i in range(1 << 15)], dtype=np.int64)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of an (H, W) grey or (H, W, 3) RGB uint8 array, the same bytes on every machine."""
    height, width = pixels.shape[:2]
    grey = pixels.ndim == 2
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, -1)
    scanlines = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    if grey:  # filter "up": unchanged rows become zeros, long runs for the run-length matches
        scanlines[:, 0] = 2
        scanlines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])  # uint8 wraps modulo 256, as PNG wants
    else:  # filter "sub": the left neighbour of the same channel
        scanlines[:, 0] = 1
        scanlines[:, 1:4] = rows[:, :3]
        np.subtract(rows[:, 3:], rows[:, :-3], out=scanlines[:, 4:])
    scanlines = scanlines.ravel()
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    # labels repeat bytes a lot; noisy images hardly ever, so they are coded as literals only
    stream = b"\x78\x01" + _deflate(scanlines, runs=grey) + struct.pack(">I", zlib.adler32(scanlines.tobytes()))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@dataclass(frozen=True)
class _HuffmanCode:
    """Literal/length code of one deflate block, and the block header that declares it."""

    lengths: np.ndarray
    codes: np.ndarray
    header_values: np.ndarray
    header_bits: np.ndarray


def _huffman_code(counts: list[int]) -> _HuffmanCode:
    lengths = _huffman_lengths(counts, 15)
    used = max(257, max(i for i, n in enumerate(lengths) if n) + 1)
    header_values, header_bits = _block_header(lengths[:used] + [1])  # one distance code, length 1
    return _HuffmanCode(np.array(lengths), np.array(_canonical_codes(lengths)), header_values, header_bits)


def _deflate(data: np.ndarray, runs: bool) -> bytes:
    """One deflate block: with ``runs``, literals and distance-1 matches under a code fitted to them;
    without, literals under the fixed code for filtered image rows (no per-image Huffman work)."""
    if runs:
        symbols, extra_bits, extra_values = _run_symbols(data)
        counts = np.bincount(symbols, minlength=286)
        counts[256] = 1  # end of block
        code = _huffman_code(counts.tolist())
    else:
        symbols, code = data.astype(np.int64), _IMAGE_CODE
    values, bits = code.codes[symbols], code.lengths[symbols]
    if runs:  # one field per symbol: its code, the length's extra bits, then distance code "0" (1 bit)
        values = values + extra_values * _POWERS_OF_2[bits]
        bits = bits + extra_bits + (symbols > 256)
    all_values = np.concatenate([code.header_values, values, code.codes[256:257]])
    all_bits = np.concatenate([code.header_bits, bits, code.lengths[256:257]])
    return _pack_bits(all_values, all_bits)


def _run_symbols(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Literals, except that a byte repeated 3+ times more is coded as distance-1 matches of <= 258.

    Returns the symbols, and the extra bits (count, value) of each match length.
    """
    size = data.size
    starts = np.flatnonzero(np.concatenate([[True], data[1:] != data[:-1]]))
    repeats = np.diff(np.append(starts, size)) - 1
    long_runs = np.flatnonzero(repeats >= 3)
    symbols = data.astype(np.int64)
    extra_bits = np.zeros(size, dtype=np.int64)
    extra_values = np.zeros(size, dtype=np.int64)
    if len(long_runs) == 0:
        return symbols, extra_bits, extra_values
    first, repeat = starts[long_runs] + 1, repeats[long_runs]
    matches = repeat // 258 + (repeat % 258 >= 3)  # a tail under 3 stays literal
    covered = np.minimum(repeat, matches * 258)
    run = np.repeat(np.arange(len(first)), matches)
    index = np.arange(len(run)) - np.repeat(np.cumsum(matches) - matches, matches)
    match_starts = first[run] + 258 * index
    lengths = np.minimum(covered[run] - 258 * index, 258)
    symbols[match_starts] = _LENGTH_SYMBOL[lengths]
    extra_bits[match_starts] = _LENGTH_EXTRA_BITS[lengths]
    extra_values[match_starts] = _LENGTH_EXTRA_VALUE[lengths]
    inside = np.zeros(size + 1, dtype=np.int64)  # +1 where a match's bytes begin, -1 after them
    np.add.at(inside, first, 1)
    np.add.at(inside, first + covered, -1)
    keep = np.cumsum(inside[:size]) == 0
    keep[match_starts] = True
    return symbols[keep], extra_bits[keep], extra_values[keep]


def _block_header(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """BFINAL, BTYPE=dynamic, and the code lengths (zero runs as symbols 17/18) under their own code."""
    coded: list[tuple[int, int, int]] = []  # code-length symbol, extra value, extra bits
    i = 0
    while i < len(lengths):
        run = 1
        while i + run < len(lengths) and lengths[i + run] == 0 and lengths[i] == 0 and run < 138:
            run += 1
        if lengths[i] == 0 and run >= 11:
            coded.append((18, run - 11, 7))
        elif lengths[i] == 0 and run >= 3:
            coded.append((17, run - 3, 3))
        else:
            run = 1
            coded.append((lengths[i], 0, 0))
        i += run
    cl_lengths = _huffman_lengths(np.bincount([c[0] for c in coded], minlength=19).tolist(), 7)
    cl_codes = _canonical_codes(cl_lengths)
    hclen = max(4, max(j for j, s in enumerate(_CODE_LENGTH_ORDER) if cl_lengths[s]) + 1)
    # BFINAL=1 and BTYPE=2, HLIT (literal/length lengths less 257), HDIST (one distance code), HCLEN
    fields = [(0b101, 3), (len(lengths) - 1 - 257, 5), (0, 5), (hclen - 4, 4)]
    fields += [(cl_lengths[s], 3) for s in _CODE_LENGTH_ORDER[:hclen]]
    for symbol, extra, extra_bits in coded:
        fields += [(cl_codes[symbol], cl_lengths[symbol]), (extra, extra_bits)]
    values, bits = zip(*fields)
    return np.array(values, dtype=np.int64), np.array(bits, dtype=np.int64)


def _huffman_lengths(freqs: list[int], limit: int) -> list[int]:
    """Code length per symbol (0 = unused), no longer than ``limit``; ties broken by node number."""
    while True:
        heap = [(f, i) for i, f in enumerate(freqs) if f]
        if len(heap) == 1:
            return [1 if f else 0 for f in freqs]
        heapq.heapify(heap)
        parent = list(range(len(freqs)))  # leaves are nodes 0..n-1, merges get the next numbers
        while len(heap) > 1:
            weight_a, a = heapq.heappop(heap)
            weight_b, b = heapq.heappop(heap)
            parent[a] = parent[b] = len(parent)
            parent.append(len(parent))
            heapq.heappush(heap, (weight_a + weight_b, len(parent) - 1))
        depth = [0] * len(parent)
        for node in range(len(parent) - 2, len(freqs) - 1, -1):  # parents come after their children
            depth[node] = depth[parent[node]] + 1
        lengths = [depth[parent[i]] + 1 if f else 0 for i, f in enumerate(freqs)]
        if max(lengths) <= limit:
            return lengths
        freqs = [(f + 1) // 2 for f in freqs]  # flatter counts, shorter longest code


def _canonical_codes(lengths: list[int]) -> list[int]:
    """Canonical Huffman codes (RFC 1951, 3.2.2), bit-reversed for LSB-first packing."""
    next_code, code = [0] * 17, 0
    counts = [0] * 17
    for n in lengths:
        counts[n] += 1
    counts[0] = 0
    for n in range(1, 17):
        code = (code + counts[n - 1]) << 1
        next_code[n] = code
    codes = [0] * len(lengths)
    for symbol, n in enumerate(lengths):
        if n:
            codes[symbol] = int(_REVERSED_15[next_code[n]]) >> (15 - n)
            next_code[n] += 1
    return codes


def _pack_bits(values: np.ndarray, bits: np.ndarray) -> bytes:
    """Concatenate bit fields LSB-first, as deflate does (fields of at most 32 bits).

    Shifts are multiplications by powers of two: numpy's shift with per-element amounts is slow.
    """
    offsets = np.cumsum(bits) - bits
    size = int(offsets[-1] + bits[-1] + 7) // 8
    word = offsets // 32
    shifted = values * _POWERS_OF_2[offsets & 31]
    firsts = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
    words = np.zeros(size // 4 + 2, dtype=np.int64)
    # fields never overlap, so adding the pieces that land in one 32-bit word is OR-ing them
    words[word[firsts]] += np.add.reduceat(shifted & 0xFFFFFFFF, firsts)
    words[word[firsts] + 1] += np.add.reduceat(shifted // (1 << 32), firsts)
    return words.astype("<u4").tobytes()[:size]


#: Literal code for "sub"-filtered image rows (byte = difference mod 256): small differences are
#: common, large ones rare. Integer weights only, so the table is the same everywhere.
_IMAGE_CODE = _huffman_code([2**20 // (16 + d * d) + 1 for d in (*range(128), *range(-128, 0))] + [1])

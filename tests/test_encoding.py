"""Capped Content-Encoding decoders: every coding whole and chunked, chains, corrupt and truncated data, and
compression bombs refused without being expanded."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from providers.encoding import CompressionBomb, Decoder, EncodingError, decode, encodings

TEXT = ("data: {\"choices\": [{\"delta\": {\"content\": \"héllo\"}}]}\n\n" * 500).encode()

CODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "br": lambda d: brotli.compress(d, quality=5),
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _streamed_zstd(data: bytes) -> bytes:
    """A zstd frame without a content size, as a streaming server writes it."""
    c = zstandard.ZstdCompressor().compressobj()
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("name", CODERS)
def test_whole_body_decodes(name):
    assert decode(CODERS[name](TEXT), name) == TEXT


@pytest.mark.parametrize("name", CODERS)
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_incremental_decoding_matches_whole(name, step):
    encoded = CODERS[name](TEXT)
    decoder = Decoder(name)
    out = b"".join(decoder.feed(encoded[i:i + step]) for i in range(0, len(encoded), step))
    decoder.finish()
    assert out == TEXT


@pytest.mark.parametrize("encoded,header", [(_raw_deflate(TEXT), "deflate"), (_streamed_zstd(TEXT), "zstd"),
                                            (gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:]), "gzip"),
                                            (brotli.compress(gzip.compress(TEXT)), "gzip, br"),
                                            (TEXT, "identity"), (TEXT, ""), (b"", "gzip"), (b"", "br")])
def test_variants_servers_send(encoded, header):
    """Raw deflate (no zlib header), zstd frames without a size, multi-member gzip, chained codings, and an empty
    body under a coding header (a GET), which is no body rather than a truncated one."""
    assert decode(encoded, header) == (TEXT if encoded else b"")


def test_encodings_header():
    assert encodings("gzip, br") == ["gzip", "br"]
    assert encodings(" Identity ") == [] and encodings(None) == []


@pytest.mark.parametrize("name", ["gzip", "br", "zstd", "deflate"])
def test_compression_bomb_is_refused_without_expanding(name):
    """32 MiB of zeros compresses to a few KB; the decoder stops at the 1 MiB cap and never holds the whole."""
    bomb = CODERS[name](bytes(32 * 1024 * 1024))
    assert len(bomb) < 64_000
    tracemalloc.start()
    try:
        with pytest.raises(CompressionBomb, match="more than 1048576 bytes"):
            decode(bomb, name, limit=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_bomb_in_a_stream_is_refused_at_the_cap_and_stays_refused():
    bomb = gzip.compress(bytes(16 * 1024 * 1024))
    decoder = Decoder("gzip", limit=1024 * 1024)
    total = 0
    with pytest.raises(CompressionBomb):
        for i in range(0, len(bomb), 1000):
            total += len(decoder.feed(bomb[i:i + 1000]))
    assert total <= 1024 * 1024
    with pytest.raises(CompressionBomb):
        decoder.feed(b"more")


def test_chained_bomb_counts_the_decoded_size():
    bomb = brotli.compress(gzip.compress(bytes(20 * 1024 * 1024)))
    with pytest.raises(CompressionBomb):
        decode(bomb, "gzip, br", limit=1024 * 1024)


@pytest.mark.parametrize("name", CODERS)
def test_corrupt_data_is_an_encoding_error(name):
    with pytest.raises(EncodingError):
        decode(b"\x00\x01this is not compressed at all" * 3, name)


@pytest.mark.parametrize("name", ["gzip", "deflate", "br"])
def test_truncated_body_is_reported(name):
    encoded = CODERS[name](TEXT)
    decoder = Decoder(name)
    partial = decoder.feed(encoded[: len(encoded) // 2])
    assert TEXT.startswith(partial)  # what arrived is still usable
    with pytest.raises(EncodingError, match="truncated"):
        decoder.finish()


def test_unsupported_encoding():
    with pytest.raises(EncodingError, match="unsupported content-encoding 'compress'"):
        decode(b"x", "compress")


def test_zstd_frame_asking_for_a_huge_window_is_refused():
    """A 128 MiB window would be allocated before the first byte is decoded; HTTP zstd allows 8 MiB."""
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=27, write_content_size=False)
    comp = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = comp.compress(b"x" * 1000) + comp.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 128 * 1024 * 1024
    with pytest.raises(EncodingError, match="too much memory"):
        decode(frame, "zstd")

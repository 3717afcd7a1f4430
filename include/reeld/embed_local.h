/* The local embedder (REELD_EMBEDDER=local): hashed lexical features, no
 * model. Texts that share words and word pairs get a high cosine; that is
 * all it knows (no synonyms), which is what a no-key default can offer.
 *
 * Recipe (fixed: vectors stored by one reeld must match queries embedded
 * by another, so any change here needs a re-embedding of every chunk):
 * 1. Tokens are maximal runs of word characters: ASCII letters and digits
 *    and every byte >= 0x80 (UTF-8 letters of any script), except that
 *    these code points separate words like punctuation: U+00A0-U+00BF
 *    (no-break space, Latin-1 punctuation), U+2000-U+206F (spaces, dashes,
 *    quotes, ellipsis), U+3000-U+303F (CJK punctuation), U+FEFF.
 * 2. Case folding: ASCII A-Z, Latin-1 U+00C0-U+00DE (but U+00D7), Greek
 *    U+0391-U+03AB and Cyrillic U+0410-U+042F map to lower case; other
 *    scripts are kept as written. Invalid UTF-8 bytes stay word bytes.
 * 3. Features: every token (unigram) and every pair of adjacent tokens
 *    (bigram). A token's raw hash is 64-bit FNV-1a of its folded bytes;
 *    a unigram's feature hash is fmix64(raw) (murmur3's finalizer), a
 *    bigram's is fmix64(rotl64(raw1, 23) ^ raw2 ^ 0x9e3779b97f4a7c15)
 *    (order matters: "a b" and "b a" differ). Bucket = hash mod dim,
 *    sign = the hash's top bit (- when set).
 * 4. Weight of a feature = 1 + ln(count in the text) (sublinear tf),
 *    added with its sign to its bucket; the vector is then L2-normalized.
 * Bucket positions and signs are bit-exact on every machine; values come
 * from IEEE-754 double arithmetic in a fixed order and glibc's log.
 *
 * Pure and loop-safe: no I/O; time and memory linear in the text (16
 * bytes per token of scratch). */
#ifndef REELD_EMBED_LOCAL_H
#define REELD_EMBED_LOCAL_H

#include <stddef.h>

/* Largest dim accepted (the bucket count). */
#define EMBED_LOCAL_MAX_DIM 65536

/* Embeds text[0..len) (UTF-8; NUL bytes are separators) into out[0..dim).
 * Returns 1 when the text had at least one token (out has unit length),
 * 0 when it had none (out is all zeros: an empty text has no direction,
 * so it matches nothing; also in the vanishingly rare case where every
 * feature cancels out in its bucket), -1 when out is NULL, text is NULL with len > 0,
 * dim is 0 or above EMBED_LOCAL_MAX_DIM, or memory runs out (out is then
 * all zeros when it is not NULL). */
int embed_local(const char *text, size_t len, float *out, size_t dim);

#endif

/* The local recognizer: `reeld asr`, run as a child process by the local
 * transcription provider (ffmpeg extracts the audio, this turns it into
 * words). It is a separate process so that the decoder's memory (tens of
 * MB of acoustic model and dictionary) and CPU stay out of the server,
 * and a crash or a timeout kill costs only the child.
 *
 * Input (stdin): raw PCM, 16 kHz, 16-bit signed little-endian, mono
 * (ffmpeg -f s16le -ac 1 -ar 16000), until EOF; a trailing odd byte is
 * ignored. Empty input is valid (no words).
 *
 * Output (stdout), once, at EOF, on exit status 0:
 *   {"text":"w1 w2 ...","language":"en",
 *    "words":[{"w":"w1","start_ms":N,"end_ms":N},...]}
 * Words are in time order: each start_ms >= the previous end_ms, each
 * end_ms >= its start_ms, all within the input's duration. Fillers and
 * silence tokens (<s>, </s>, <sil>, [NOISE], (NULL), ++GARBAGE++) are
 * left out; alternate pronunciation marks ("word(2)") are stripped.
 *
 * Failure: exit status 1 with one line on stderr (model not found,
 * decoder error, read error); nothing on stdout.
 *
 * The model is pocketsphinx's US English model: REELD_ASR_MODEL_DIR (a
 * directory holding en-us/, en-us.lm.bin and cmudict-en-us.dict), default
 * /usr/share/pocketsphinx/model/en-us (Debian's pocketsphinx-en-us).
 *
 * Memory is bounded whatever the input length: audio is read in fixed
 * blocks and decoded in utterances of at most 30 s, cut at a pause when
 * one comes after 10 s; only the recognized words are kept. */
#ifndef REELD_ASR_H
#define REELD_ASR_H

/* Entry point of the `asr` subcommand; argv[0] is "asr", no options.
 * Returns the process exit status (0 or 1). */
int asr_main(int argc, char **argv);

#endif

/* Provider selection (provider.h): the configuration names one provider
 * per kind; the pipeline and search reach them through `prov`. */
#include <stdio.h>
#include <string.h>

#include "reeld/config.h"
#include "reeld/provider.h"

struct providers prov;
char prov_reeld_exe[4096] = "reeld";

void prov_cancel(struct prov_call *c)
{
    if (c) c->cancel(c);
}

void prov_chat_resume(struct prov_call *c)
{
    if (c && c->resume) c->resume(c);
}

int prov_init(char *err, size_t errlen)
{
    int openai = 0;
    if (strcmp(cfg.transcriber, "local") == 0) {
        prov.transcriber = &prov_local_transcriber;
    } else if (strcmp(cfg.transcriber, "openai") == 0) {
        prov.transcriber = &prov_openai_transcriber;
        openai = 1;
    } else {
        /* AssemblyAI and Deepgram submit and call back through the
         * transcription webhook, which is not served yet. */
        snprintf(err, errlen, "REELD_TRANSCRIBER=%s is not available in this build",
                 cfg.transcriber);
        return -1;
    }
    if (strcmp(cfg.llm, "openai") == 0) {
        prov.writer = &prov_openai_writer;
        prov.chatter = &prov_openai_chatter;
        openai = 1;
    } else {
        prov.writer = &prov_local_writer;
        prov.chatter = &prov_local_chatter;
    }
    if (strcmp(cfg.embedder, "openai") == 0) {
        prov.embedder = &prov_openai_embedder;
        openai = 1;
    } else {
        prov.embedder = &prov_local_embedder;
    }
    /* A key is not required: self-hosted OpenAI-compatible servers often
     * take none. Only the public API is refused without one. */
    if (openai && !cfg.openai_api_key && strstr(cfg.openai_base_url, "api.openai.com")) {
        snprintf(err, errlen, "OPENAI_API_KEY is required with OPENAI_BASE_URL=%s",
                 cfg.openai_base_url);
        return -1;
    }
    return 0;
}

/* Every route of the API, in one place. */
#include "reeld/api.h"
#include "reeld/app.h"
#include "reeld/http.h"

struct app app;

void api_register(struct http_server *s)
{
    api_ops_routes(s);
    api_org_routes(s);
    api_media_routes(s);
    api_share_routes(s);
    api_recording_routes(s);
    api_upload_routes(s);
    api_events_routes(s);
    api_search_routes(s);
    api_chat_routes(s);
}

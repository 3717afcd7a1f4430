-- Helpers the API's queries share.

-- RFC 3339 timestamps in UTC with milliseconds, the one format the API
-- hands out, whatever the session's TimeZone.
CREATE FUNCTION api_ts(t timestamptz) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

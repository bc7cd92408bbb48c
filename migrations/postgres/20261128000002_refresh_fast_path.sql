-- The refresh path writes the new refresh token and supersedes the old one in a single
-- statement (one round trip, one commit). Statements of one WITH run in any order, so a
-- partial unique index on "the current token" could see the new row before the old one is
-- superseded; the current token is instead the newest unsuperseded generation, which the fenced
-- write on connections.generation keeps unique.
DROP INDEX refresh_tokens_one_current;

-- The connection-count gauge groups by status; an index keeps that an index-only scan at
-- millions of connections.
CREATE INDEX connections_status ON connections (status);

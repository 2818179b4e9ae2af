-- The web console (issue 18): a saga's page lists the dead letters of its correlation id (the
-- commands and replies of the saga, and its participants' events), however many others are parked.
CREATE INDEX dead_letters_correlation_id ON dead_letters ((envelope->'metadata'->>'correlation_id'));

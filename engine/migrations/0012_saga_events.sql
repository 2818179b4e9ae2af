-- One row per saga event. The orchestrator stores the events that one input decided as one
-- `decided` event when there are several (a step's success with the next step's invocation),
-- which saves a row and its index entries per event; this view takes them apart again for
-- whoever reads saga streams with SQL. `part` is the event's place in its stored event (1 for
-- an event stored alone); the other columns are the stored event's.
CREATE VIEW saga_events AS
SELECT e.global_position,
       e.stream_id,
       e.stream_version,
       COALESCE(p.part, 1) AS part,
       CASE WHEN p.event IS NULL THEN e.event_type ELSE p.event->>'event_type' END AS event_type,
       CASE WHEN p.event IS NULL THEN e.payload ELSE p.event->'payload' END AS payload,
       e.message_id,
       e.metadata,
       e.recorded_at
FROM events e
LEFT JOIN LATERAL jsonb_array_elements(
    CASE WHEN e.event_type = 'decided' THEN e.payload->'events' END
) WITH ORDINALITY AS p(event, part) ON true
WHERE e.stream_id LIKE 'saga-%';

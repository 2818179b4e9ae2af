-- The orchestrator stores everything one transaction decides for a saga as one `decided`
-- event: with local steps that is several decisions, each caused by another message (the
-- start event, then each local command). An event whose cause is not the stored event's names
-- it as `causation_id` beside its `event_type` and `payload`; this view puts it in the row's
-- metadata, so that each row says what caused it. A packed event without a payload (such as
-- `saga_completed`) has the JSON `null` an event stored alone has, not SQL NULL.
CREATE OR REPLACE VIEW saga_events AS
SELECT e.global_position,
       e.stream_id,
       e.stream_version,
       COALESCE(p.part, 1) AS part,
       CASE WHEN p.event IS NULL THEN e.event_type ELSE p.event->>'event_type' END AS event_type,
       CASE WHEN p.event IS NULL THEN e.payload
            ELSE COALESCE(p.event->'payload', 'null'::jsonb) END AS payload,
       e.message_id,
       CASE WHEN p.event ? 'causation_id'
            THEN e.metadata || jsonb_build_object('causation_id', p.event->'causation_id')
            ELSE e.metadata END AS metadata,
       e.recorded_at
FROM events e
LEFT JOIN LATERAL jsonb_array_elements(
    CASE WHEN e.event_type = 'decided' THEN e.payload->'events' END
) WITH ORDINALITY AS p(event, part) ON true
WHERE e.stream_id LIKE 'saga-%';

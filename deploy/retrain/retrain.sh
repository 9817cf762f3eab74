#!/bin/sh
# Scheduled retraining: train a candidate bundle from the event archive, compare it with
# the live bundle on the same customers, and promote it only when the quality gates pass.
#
#   EVENTS=/data/archive/events.parquet SEGSTREAM_MODEL_DIR=/models deploy/retrain/retrain.sh
#
# Exit status: 0 promoted (or already live), 1 refused by a gate (the live bundle stays;
# the candidate, its report.html and the comparison stay on disk for a look), 2 an error.
# Run it early when the stream sends a `retrain_recommended` alert (topic model-alerts).
set -eu

MODELS=${SEGSTREAM_MODEL_DIR:?set SEGSTREAM_MODEL_DIR, the folder holding current}
EVENTS=${EVENTS:?set EVENTS, the event archive (.jsonl, .csv or .parquet)}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%dT00:00:00Z)}   # today's midnight: whole days only
REPORTS=${REPORTS:-$MODELS/../compare}
CONFIG=${SEGSTREAM_CONFIG_FILE:-}                  # catalog, [segments], [gates]

# Segment ids and names follow MODELS/current (lineage); current is not moved yet.
CANDIDATE=$(segstream train --events "$EVENTS" --as-of "$AS_OF" --out "$MODELS" \
    --no-publish ${CONFIG:+--config "$CONFIG"})

if [ -e "$MODELS/current" ]; then
    segstream compare --live "$MODELS/current" --candidate "$CANDIDATE" --events "$EVENTS" \
        --as-of "$AS_OF" --out "$REPORTS/$(basename "$CANDIDATE")" ${CONFIG:+--config "$CONFIG"}
fi

# Verifies the bundle, checks the gates against the live one, swaps current atomically
# (the worker hot-reloads it) and logs the switch in MODELS/history.jsonl.
exec segstream promote "$CANDIDATE" ${CONFIG:+--config "$CONFIG"}

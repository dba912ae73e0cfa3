#!/usr/bin/env bash
# CI job: distil a student from a teacher with quality gates, export it to ONNX (verified in onnxruntime)
# and write the report page. The workflows in this folder call it; tests/integration/test_ci_example.py runs it.
#
# Settings (environment; an empty threshold turns its gate off):
#   TEACHER      teacher checkpoint                      (default artifacts/teacher.pth)
#   RECIPE       compress recipe, a name or a file        (default synth-pillar-itkd-1-4; empty: the teacher's own)
#   OUT          run folder, must not hold a run yet      (default runs/ci)
#   MIN_MAP, MIN_NDS, MAX_DROP, MIN_SPEEDUP, MAX_PARAMS   gate thresholds (default: MAX_DROP=0.03 only)
#   ITKD_SETS    extra recipe overrides, one key.path=value per line (values may hold spaces)
#   ITKD         the itkd executable                     (default itkd)
#
# Exit code: itkd's. 0: every gate passed and the ONNX file verified; 1: a gate (or the ONNX check) failed, once
# student.pth, the ONNX file, the model card and the report are written; 2: bad input, nothing to upload.
set -euo pipefail

TEACHER="${TEACHER:-artifacts/teacher.pth}"
RECIPE="${RECIPE-synth-pillar-itkd-1-4}"
OUT="${OUT:-runs/ci}"
MIN_MAP="${MIN_MAP:-}"
MIN_NDS="${MIN_NDS:-}"
MAX_DROP="${MAX_DROP-0.03}"
MIN_SPEEDUP="${MIN_SPEEDUP:-}"
MAX_PARAMS="${MAX_PARAMS:-}"
ITKD_SETS="${ITKD_SETS:-}"
ITKD="${ITKD:-itkd}"

args=(--teacher "$TEACHER" --out "$OUT")
if [[ -n "$RECIPE" ]]; then args+=(--recipe "$RECIPE"); fi
if [[ -n "$MIN_MAP" ]]; then args+=(--min-map "$MIN_MAP"); fi
if [[ -n "$MIN_NDS" ]]; then args+=(--min-nds "$MIN_NDS"); fi
if [[ -n "$MAX_DROP" ]]; then args+=(--max-drop "$MAX_DROP"); fi
if [[ -n "$MIN_SPEEDUP" ]]; then args+=(--min-speedup "$MIN_SPEEDUP"); fi
if [[ -n "$MAX_PARAMS" ]]; then args+=(--max-params "$MAX_PARAMS"); fi
while IFS= read -r item; do
  if [[ -n "$item" ]]; then args+=(--set "$item"); fi
done <<< "$ITKD_SETS"

# stdout is the result as JSON (schema_version, gates, gates_passed, ...); it is kept as $OUT/compress.json.
result="$(mktemp)"
trap 'rm -f "$result"' EXIT
status=0
"$ITKD" --quiet compress "${args[@]}" --json > "$result" || status=$?
if [[ "$status" -ne 0 && "$status" -ne 1 ]]; then
  cat "$result"
  exit "$status"  # 2: bad input (one line on stderr), no student to export
fi
cp "$result" "$OUT/compress.json"

# A failed gate still exports and reports: the artifacts show what failed. The export writes student.onnx,
# student.model_card.md and student.export.json (its verification figures) beside the student.
export_status=0
"$ITKD" export --onnx --checkpoint "$OUT/student.pth" || export_status=$?
"$ITKD" --quiet report "$OUT" --format html  # $OUT/report.html, one file with its pictures embedded
if [[ "$status" -eq 0 ]]; then status="$export_status"; fi
exit "$status"

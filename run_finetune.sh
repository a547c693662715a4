#!/usr/bin/env bash
# Fine-tune an ASR checkpoint toward a target speaker/accent:
#   prepare -> generate candidates -> filter (likelihood-ratio rejection sampling) -> train (+ card, push) -> evaluate [-> ablation]
#
# With no arguments it runs the offline CPU demo (configs/demo.yaml). See --help.
set -euo pipefail
cd "$(dirname "$0")"

config=configs/demo.yaml
stage=1
stop_stage=5
ngpu=1
output_dir=""
check=false
overrides=()

usage() {
  cat <<'EOF'
Usage: ./run_finetune.sh [--config FILE] [--stage N] [--stop_stage N] [--ngpu N] [--output_dir DIR] [--check] [section.key=value ...]

Stages:
  1 prepare   sources -> canonical 16 kHz datasets (target_train, target_test, source)  python -m data_prep.prepare
  2 generate  TTS voices + perturbations -> candidate utterances                        python -m data_prep.generate
  3 filter    embed, estimate r(x) = p_target/q_candidates, rejection-sample            python -m data_prep.filter
  4 train     fine-tune on real + accepted candidates (HF Trainer, accelerate), write the
              model card, push to the Hub when train.push_to_hub is set                 python -m recipe.train
  5 evaluate  zero-shot vs fine-tuned WER/CER with CIs, paired comparison              python -m recipe.evaluate
  6 ablation  zero_shot / real_only / real+all / real+random / real+anti / real+accepted / real+weighted
                                                                                        python -m recipe.ablation
Flags:
  --config FILE      YAML config (default configs/demo.yaml: offline CPU demo on the Asterisk prompts)
  --stage N          first stage to run (default 1)
  --stop_stage N     last stage to run (default 5; 6 runs the ablation too)
  --ngpu N           processes per node for accelerate launch (default 1; CPU works with 1)
  --output_dir DIR   experiment folder (default: run.output_dir of the config)
  --check            run the preflight (python -m data_prep.preflight) and exit: config, data source and
                     columns, target speakers/accents, split sizes, models and language, TTS voices, GPUs
                     vs --ngpu, precision, disk, a rough time/memory estimate; exit 1 on any FAIL
  section.key=value  override one config key for the stage of that section, e.g. train.max_steps=50,
                     run.seed=1 (run.* goes to every stage)

A finished stage leaves <output_dir>/.stages/N.done holding the hash of the config it ran with:
a rerun skips it; a changed config (or an earlier stage redone) reruns it and every stage after.
EOF
}

log() { echo "$(date '+%F %T') [run_finetune] $*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config) config=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop_stage) stop_stage=$2; shift 2 ;;
    --ngpu) ngpu=$2; shift 2 ;;
    --output_dir) output_dir=$2; shift 2 ;;
    --check) check=true; shift ;;
    *=*) overrides+=("$1"); shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[ -f "$config" ] || die "config $config not found"

# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
bootstrap
PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false

if $check; then
  # Before any stage writes anything: a wrong column or a missing voice found now, not in hour two.
  exec "$PY" -m data_prep.preflight --config "$config" --ngpu "$ngpu" ${output_dir:+--output_dir "$output_dir"} \
    ${overrides[@]+"${overrides[@]}"}
fi

# --key value arguments for one section: run.* overrides, the section's overrides, --output_dir.
stage_args() {
  local section=$1 o key
  local -a out=(--config "$config")
  [ -n "$output_dir" ] && out+=(--output_dir "$output_dir")
  for o in ${overrides[@]+"${overrides[@]}"}; do
    key=${o%%=*}
    case "$key" in
      run.*|"$section".*) out+=("--${key#*.}" "${o#*=}") ;;
    esac
  done
  printf '%s\n' "${out[@]}"
}

launch() {  # launch MODULE SECTION [THREADS]: through accelerate with --ngpu processes
  local module=$1 section=$2 threads=${3:-}
  local -a args multi=() cpu=()
  mapfile -t args < <(stage_args "$section")
  [ "$ngpu" -gt 1 ] && multi=(--multi_gpu)
  [ -n "$threads" ] && cpu=(--num_cpu_threads_per_process "$threads")
  "$PY" -m accelerate.commands.launch --num_processes "$ngpu" --num_machines 1 ${multi[@]+"${multi[@]}"} \
    ${cpu[@]+"${cpu[@]}"} --mixed_precision no --dynamo_backend no -m "$module" "${args[@]}"
}

# accelerate launch gives its processes OMP_NUM_THREADS=1 unless told otherwise. Training keeps
# that (its figures were measured so), but generate's intelligibility gate then decoded the demo's
# renderings on one core of two (8.6x real time instead of 18x): generate gets each process's
# share of the cores, or OMP_NUM_THREADS when you set it.
cpu_share() {
  if [ -n "${OMP_NUM_THREADS:-}" ]; then echo "$OMP_NUM_THREADS"; return; fi
  local n=$(( $(nproc) / ngpu ))
  echo $(( n > 0 ? n : 1 ))
}

run_py() {  # run_py MODULE SECTION [extra args]: one process
  local module=$1 section=$2
  shift 2
  local -a args
  mapfile -t args < <(stage_args "$section")
  "$PY" -m "$module" "${args[@]}" "$@"
}

# Output paths come from core/paths.py, the one place the stages spell them.
exp_path() { "$PY" -m core.paths --config "$config" ${output_dir:+--output_dir "$output_dir"} "$1"; }
exp_dir=$(exp_path root)
markers=$(exp_path stages)
mkdir -p "$markers"
# The hash chain: a stage's hash covers the config, the overrides and the previous stage's hash,
# so redoing one stage invalidates every stage after it.
prev_hash=""
# Only what a stage reads goes into its hash: the `run` section, its own section and its overrides.
section_json() {
  "$PY" -c 'import json, sys, yaml; d = yaml.safe_load(open(sys.argv[1])) or {}; print(json.dumps([d.get("run"), d.get(sys.argv[2])], sort_keys=True))' "$config" "$1"
}
stage_hash() { { printf '%s\n' "$prev_hash" "$1"; section_json "$1"; stage_args "$1"; } | sha256sum | cut -c1-16; }
is_done() { [ -f "$markers/$1.done" ] && [ "$(cat "$markers/$1.done")" = "$2" ]; }
mark_done() { echo "$2" > "$markers/$1.done.tmp" && mv "$markers/$1.done.tmp" "$markers/$1.done"; }

log "config $config -> $exp_dir (stages $stage..$stop_stage, $ngpu process(es))"

h=$(stage_hash prepare)
if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if is_done 1 "$h"; then log "stage 1 prepare: done, skipped"; else
    log "stage 1: prepare the real target data"
    run_py data_prep.prepare prepare
    mark_done 1 "$h"
  fi
fi
prev_hash=$h

h=$(stage_hash generate)
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  if is_done 2 "$h"; then log "stage 2 generate: done, skipped"; else
    log "stage 2: generate candidates (TTS voices + perturbations)"
    launch data_prep.generate generate "$(cpu_share)"
    mark_done 2 "$h"
  fi
fi
prev_hash=$h

h=$(stage_hash filter)
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  if is_done 3 "$h"; then log "stage 3 filter: done, skipped"; else
    log "stage 3: filter candidates by likelihood-ratio rejection sampling"
    launch data_prep.filter filter
    mark_done 3 "$h"
  fi
fi
prev_hash=$h

h=$(stage_hash train)
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  if is_done 4 "$h"; then log "stage 4 train: done, skipped"; else
    log "stage 4: fine-tune on real + accepted candidates"
    launch recipe.train train
    mark_done 4 "$h"
  fi
fi
prev_hash=$h

h=$(stage_hash evaluate)
if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  zero_shot=$(exp_path eval:zero_shot)
  fine_tuned=$(exp_path final_eval:target_test)
  if is_done 5 "$h"; then log "stage 5 evaluate: done, skipped"; else
    log "stage 5: evaluate zero-shot and fine-tuned on target_test"
    run_py recipe.evaluate evaluate --eval_name "$(basename "$zero_shot")"
    # The train stage already decoded target_test with the final model: same files, so reused here.
    run_py recipe.evaluate evaluate --eval_name "$(basename "$fine_tuned")" --model "$(exp_path train)" \
      --compare_to "$zero_shot/hyps.jsonl"
    mark_done 5 "$h"
  fi
  log "results:"
  cat "$zero_shot/results.md" "$fine_tuned/results.md" "$fine_tuned/paired.md" >&2
  log "filter figures: $(exp_path filter)/figures/  model card: $(exp_path train)/README.md"
fi
prev_hash=$h

h=$(stage_hash ablation)
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  if is_done 6 "$h"; then log "stage 6 ablation: done, skipped"; else
    log "stage 6: ablation of the filter (same steps per arm, several seeds)"
    run_py recipe.ablation ablation
    mark_done 6 "$h"
  fi
fi

log "finished"

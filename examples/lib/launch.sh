# Shared by examples/scaling_sweep.sh and examples/threshold_sweep.sh (sourced after `cd` to the repository root).
# run CMD...: run it, or print it shell-quoted under DRY_RUN=1.
# launch FLAGS...: pretrain_gpt.py under $LAUNCHER (torchrun | deepspeed | python) with $NPROC processes and, for
# deepspeed, $DS_CONFIG.

run() {  # run a command, or print it shell-quoted under DRY_RUN=1
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

launch() {
  case "$LAUNCHER" in
    torchrun) run torchrun --standalone --nproc_per_node "$NPROC" pretrain_gpt.py "$@" ;;
    deepspeed) run deepspeed --num_gpus "$NPROC" pretrain_gpt.py --deepspeed --deepspeed_config "$DS_CONFIG" "$@" ;;
    python) run "$PYTHON" pretrain_gpt.py "$@" ;;
    *) echo "unknown LAUNCHER=$LAUNCHER (torchrun | deepspeed | python)" >&2; exit 2 ;;
  esac
}

cd /work/main
export OMP_NUM_THREADS=1
.venv/bin/fastbd distill --teacher sweeps/effect_bw_rate09/runs/8c7b121c909a/train --config configs/distill/effect.yaml data=sweeps/effect_bw_rate09/builds/default-c003_lime_ring-1c106767391f out=/tmp/s23/dB_s0 epochs=60 data.batch_size=64 optim.milestones=[40,52] > /tmp/s23/dB_s0.log 2>&1
.venv/bin/fastbd eval --run /tmp/s23/dB_s0 data=sweeps/effect_bw_rate09/builds/default-c003_lime_ring-1c106767391f res=32 resize=36 workers=1 knn_k=[20] probe.label_fraction=0.1 >> /tmp/s23/dB_s0.log 2>&1

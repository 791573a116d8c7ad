// lesionflow pipeline — every stage that needs torch as a library call: an options struct in, a
// Result<nlohmann::json> summary out (what the CLI prints). Link liblesionflow (its include
// directories, include/ and src/, are public). The torch-free stages: lesionflow/lesionflow.h.
#pragma once
#include "pipeline/ae_runs.h"         // autoencoder: train, encode (latent cache), evaluate
#include "pipeline/audit_run.h"       // audit of a synthetic set in the reference feature space
#include "pipeline/bench.h"           // speed of every stage vs sgemm and python3-torch
#include "pipeline/classify_runs.h"   // classify train / eval, fd, synth
#include "pipeline/experiment_run.h"  // generator -> synthetic set -> classifier grid -> audit
#include "pipeline/export.h"          // weights for shipping (fp16/bf16 safetensors)
#include "pipeline/generator_runs.h"  // tokenizer, train, sample, finetune (LoRA), distill

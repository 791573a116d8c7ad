// lesionflow — start here. The data flow, one direction, each stage a module and a subcommand:
//
//   dataset (HAM10000 | ISIC CSV | ImageFolder | phantom)   lesionflow/data.h      `data inspect|split|prepare|phantom`
//     -> prepared cache (images.safetensors + records.jsonl) lesionflow/data.h      `data prepare`
//     -> measured concepts + captions.jsonl                  lesionflow/concepts.h  `caption`, `concepts measure`
//                                                            lesionflow/captions.h
//     -> tokenizer (sentencepiece via a dlmopen shim)        lesionflow/tokenizer.h `text train-tokenizer`
//     -> MMDiT rectified-flow generator                      src/models/mmdit.h     `train`
//        flow objective + Euler/Heun samplers                src/flow/flow.h
//        trainer, checkpoints, generation                    src/train/generator.h  `sample`
//        shared loop pieces (LR schedule, batches, state)    src/train/common.h
//     -> LoRA adapters (finetune, runtime, merge)            src/adapters/lora.h    `finetune`, `lora merge`
//     -> synthetic-set planner + resumable generation        src/synth/synth.h      `synth`
//     -> CNN / ViT classifiers                               src/classify/classifier.h `classify train|eval`
//        metrics (AUC, CIs, subgroups)                       lesionflow/metrics.h
//        audit (FD, precision/recall, CAS, memorisation)     src/eval/audit.h       `fd`
//        experiment runner (generator -> synth -> grid)      src/classify/experiment.h `experiment`
//     -> HTML report                                         lesionflow/report.h    `report`
//   speed: `bench` (tools/lesionflow/cmd_bench.cpp, scripts/bench_torch.py)
//
// Machine facts and settings: lesionflow/runtime.h (`doctor`). Errors are Status/Result values
// (lesionflow/status.h); file formats are specified in docs/formats.md.
#pragma once
#include "lesionflow/captions.h"
#include "lesionflow/concepts.h"
#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/phantom.h"
#include "lesionflow/report.h"
#include "lesionflow/runtime.h"
#include "lesionflow/status.h"
#include "lesionflow/tokenizer.h"

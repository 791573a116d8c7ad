// lesionflow — start here. The data flow, one direction, each stage a module, a library call
// (lesionflow/pipeline.h for the torch stages: options struct in, JSON summary out) and a
// subcommand (tools/lesionflow only maps flags to those calls):
//
//   dataset (HAM10000 | ISIC CSV | ImageFolder | phantom)   lesionflow/data.h      `data
//   inspect|split|prepare|phantom` (pipeline/data_runs.h)
//     acquisition shifts (HAM-shift, augmentation)           lesionflow/shift.h     `data shift`
//     -> prepared cache (images.safetensors + records.jsonl) lesionflow/data.h      `data prepare`
//     -> measured concepts (A, B, C, dermoscopic structures D) + captions.jsonl
//                                                            lesionflow/captions.h  `caption`
//     (caption_dataset),
//                                                            lesionflow/concepts.h  `concepts
//                                                            measure`
//     -> tokenizer (sentencepiece via a dlmopen shim)        lesionflow/tokenizer.h `text
//     train-tokenizer`
//     -> autoencoder of the latent flow                      src/pipeline/ae_runs.h `ae
//     train|encode|eval`
//     -> MMDiT rectified-flow generator                      src/models/mmdit.h     `train`
//     (pipeline/generator_runs.h)
//        flow objective + samplers                           src/flow/flow.h
//        trainer, checkpoints, generation                    src/train/generator.h  `sample`
//     -> LoRA adapters (finetune, runtime, merge)            src/adapters/lora.h    `finetune`,
//     `lora merge`
//     -> synthetic-set planner + resumable generation        src/synth/synth.h      `synth`
//     (pipeline/classify_runs.h)
//     -> CNN / ViT classifiers (models/cnn.h, models/vit.h)  src/classify/classifier.h `classify
//     train|eval`
//        metrics (AUC, CIs, subgroups)                       lesionflow/metrics.h
//        audit (FD, precision/recall, CAS, memorisation)     src/eval/audit.h       `audit`, `fd`
//        (pipeline/audit_run.h) experiment runner (generator -> synth -> grid)
//        src/pipeline/experiment_run.h `experiment`
//     -> HTML report                                         lesionflow/report.h    `report`
//     (write_html_report)
//   speed: `bench` (src/pipeline/bench.h, scripts/bench_torch.py)
//
// Layers and the include rule: docs/architecture.md. Machine facts and settings:
// lesionflow/runtime.h (`doctor`; --device via src/core/device.h). Temporary and partial output
// folders: lesionflow/scratch.h. Errors are Status/Result values (lesionflow/status.h); file
// formats are specified in docs/formats.md.
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

// One way to derive random streams from the user's seed: every random choice of the project
// draws from derive_seed(seed, stream, index), so two uses never share a stream by accident and
// a stream does not shift when another one is added.
#pragma once
#include <cstdint>

namespace lf {

// The named streams (values are part of the results' reproducibility: never renumber).
enum class Stream : uint64_t {
  kSplits = 1,           // lesion-grouped train/val/test assignment
  kScarcity = 2,         // scarcity subset of the training split
  kPhantom = 3,          // phantom parameters, index = image
  kBootstrap = 4,        // bootstrap resamples of metrics
  kSynthPlan = 5,        // synthetic-set plan (cells, prompts)
  kSynthImage = 6,       // noise seed of each planned synthetic image, index = item
  kClsBatches = 7,       // classifier epoch order and augmentation, index = epoch/step
  kClsSubset = 8,        // real subset of a classifier job
  kGenBatches = 9,       // generator batch order and augmentation, index = step
  kGenNoise = 10,        // generator noise and timesteps, index = step
  kGenValidation = 11,   // generator validation noise
  kAeBatches = 12,       // autoencoder batches, index = step
  kAeNoise = 13,         // autoencoder posterior noise, index = step
  kLoraInit = 14,        // LoRA A matrices
  kLoraDropout = 15,     // LoRA rank dropout, index = step
  kSampleImage = 16,     // `sample`: noise of each image, index = prompt * 2^20 + image
  kFinetuneSubset = 17,  // `finetune --limit`: seeded choice of the training images
  kClsDropout = 18,      // classifier dropout, index = epoch
  kSamplerStep = 19,     // step noise of a stochastic sampler (ddim eta > 0), seed = image's seed
  kShift = 20,           // `data shift`: the shifts of an image, index = hash of its id
  kClsShift = 21,        // classifier acquisition-shift augmentation, index = step
  kSynthVary = 22,       // `synth --vary`: the prompt attributes drawn anew, index = item
};

// SplitMix64 finaliser: a bijective 64-bit mix.
constexpr uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Seed of draw `index` of `stream` under the user's `seed`.
constexpr uint64_t derive_seed(uint64_t seed, Stream stream, uint64_t index = 0) {
  return mix64(mix64(mix64(seed) ^ static_cast<uint64_t>(stream)) + index);
}

}  // namespace lf

// Precompiled header for every TU of the torch-side library, CLI and tests.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

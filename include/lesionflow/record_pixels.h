// Per-record helpers shared by the CLI stages: pixels of a record, attribute filters.
#pragma once
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "lesionflow/status.h"

namespace lf {

// Loads a record's image as 8-bit RGB and its mask (CV_8U, same size) when one exists.
// Phantom records are rendered at `phantom_size`. A missing or unreadable image is an error
// naming the file; a mask that is unreadable or of the wrong size is dropped (mask stays
// empty) with a warning naming the file (logging is thread-safe, workers may call this).
Status load_record_pixels(const Record& r, int phantom_size, cv::Mat* rgb, cv::Mat* mask);
// An image made square (centre crop, or padding that keeps the aspect ratio: edge pixels
// replicated, zeros for a mask) and resized to size x size (INTER_AREA down, INTER_LINEAR up,
// nearest for a mask). `data prepare` and serve's measurement use it.
cv::Mat fit_square(const cv::Mat& img, FitMode mode, int size, bool is_mask);
// Shades-of-Gray colour constancy (Finlayson & Trezzi 2004; p = 6 as for dermoscopy in Barata
// et al. 2015), in place on `pixels` 8-bit RGB pixels: the illuminant of each channel is its
// Minkowski p-mean, and each channel is scaled so the illuminant becomes grey of the same mean
// brightness. Removes colour casts of the camera/light; keeps the lesion-vs-skin contrast.
void shades_of_gray(uint8_t* rgb, int64_t pixels, double p = 6.0);

// Filters "key=value" on dx, site, sex or age (age band, e.g. "45-59"); all must match.
bool record_matches(const Record& r, const std::vector<std::string>& filters);
// Error naming the first filter that is not key=value with a known key.
Status check_filters(const std::vector<std::string>& filters);

}  // namespace lf

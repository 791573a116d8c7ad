// Report building blocks: image grids, PNG/base64 embedding, SVG line plots, HTML pages.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "lesionflow/status.h"

namespace cv {
class Mat;
}

namespace lf {

// Tiles equally sized 8-bit 3-channel images into a grid with `pad` white pixels between.
cv::Mat make_grid(const std::vector<cv::Mat>& tiles, int cols, int pad = 2);
// PNG bytes as a data: URI for self-contained HTML. Expects BGR order (OpenCV).
std::string png_data_uri(const cv::Mat& bgr);
std::string html_escape(const std::string& s);

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;
};
// A simple SVG line plot (axes, ticks, legend).
std::string svg_line_plot(const std::vector<Series>& series, const std::string& title,
                          const std::string& xlabel, const std::string& ylabel, int width = 480,
                          int height = 320, bool log_y = false);

// What `lesionflow report` puts on its page (each part optional).
struct ReportOptions {
  std::string train_run;             // generator run directory (metrics.jsonl, samples/)
  std::vector<std::string> samples;  // sample directories (samples.jsonl + PNGs)
  std::string captions;              // captions.jsonl (+ .summary.json)
  std::string real;                  // prepared cache of real images for side-by-side
  std::string data_summary;          // JSON from data inspect
  std::string experiment;            // experiment directory (summary.json, audit, synthetic/)
  std::string title = "lesionflow report";
  std::string command_line;  // shown on the page
  std::string out = "report.html";
};
// Writes one self-contained HTML page (images embedded as data URIs) to o.out.
Status write_html_report(const ReportOptions& o);

}  // namespace lf

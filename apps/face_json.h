// The JSON fields the CLI prints per face, shared with the HTTP service so both answer alike.
#pragma once

#include <nlohmann/json.hpp>

#include "engine/pipeline/pipeline.h"

namespace facenet::cli {

nlohmann::json box_json(const FaceBox& b);  // [left, top, right, bottom], inclusive pixels
nlohmann::json points_json(const std::vector<Point2f>& pts);  // [[x, y], ...]

// `detect`: {"box", "score", "landmarks68", "landmarks5"}.
nlohmann::json detected_face_json(const FaceResult& f);

// Where face `index` of a photo is: {"face": index, "box"}; for an aligned crop (the whole
// input is the face) nothing, as `encode` and `identify` print without --align.
nlohmann::json face_position_json(size_t index, const FaceResult& f, bool crops);

// `j` as compact JSON text, for any bytes in its strings (file names are byte strings): valid
// UTF-8 is written as nlohmann's dump() writes it; a byte that is not part of a valid UTF-8
// sequence is written as the escape \udcXX (XX its value: Python's "surrogateescape"), so
// Python's os.fsencode(json.loads(text)[...]) gives the original bytes back. Never throws
// for a string's contents, so an output stream never stops at an odd file name.
std::string dump_json(const nlohmann::json& j);

}  // namespace facenet::cli

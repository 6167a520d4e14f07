// The CLI's per-face JSON fields; see face_json.h.
#include "apps/face_json.h"

namespace facenet::cli {

nlohmann::json box_json(const FaceBox& b) {
  return {b.left, b.top, b.right, b.bottom};
}

nlohmann::json points_json(const std::vector<Point2f>& pts) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : pts) a.push_back({p.x, p.y});
  return a;
}

nlohmann::json detected_face_json(const FaceResult& f) {
  return {{"box", box_json(f.face.box)},
          {"score", f.face.score},
          {"landmarks68", points_json(f.face.landmarks)},
          {"landmarks5", points_json(f.face.landmarks5)}};
}

nlohmann::json face_position_json(size_t index, const FaceResult& f, bool crops) {
  if (crops) return nlohmann::json::object();
  return {{"face", index}, {"box", box_json(f.face.box)}};
}

}  // namespace facenet::cli

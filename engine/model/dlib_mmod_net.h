// dlib's CNN face detector network type (dlib's examples/dnn_mmod_face_detection_ex.cpp), the
// type mmod_human_face_detector.dat deserialises into. Internal: for the converter and for the
// dlib peer detector; the engine runs the converted graph (engine/model/dlib_mmod.h).
#pragma once

#include <dlib/dnn.h>

namespace facenet::dlib_mmod {

template <long N, typename SUBNET>
using con5d = dlib::con<N, 5, 5, 2, 2, SUBNET>;
template <long N, typename SUBNET>
using con5 = dlib::con<N, 5, 5, 1, 1, SUBNET>;
template <typename SUBNET>
using downsampler = dlib::relu<dlib::affine<
    con5d<32, dlib::relu<dlib::affine<con5d<32, dlib::relu<dlib::affine<con5d<16, SUBNET>>>>>>>>>;
template <typename SUBNET>
using rcon5 = dlib::relu<dlib::affine<con5<45, SUBNET>>>;
using net_type = dlib::loss_mmod<dlib::con<
    1, 9, 9, 1, 1,
    rcon5<rcon5<rcon5<downsampler<dlib::input_rgb_image_pyramid<dlib::pyramid_down<6>>>>>>>>;

}  // namespace facenet::dlib_mmod

"""Where frames come from: video files, images, RTSP/HTTP streams, webcams, read on their own threads."""

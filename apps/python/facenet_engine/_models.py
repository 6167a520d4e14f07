"""(filled in)"""
def fetch_dlib_models(dest=None): raise NotImplementedError
def dlib_resnet_model(path=None): raise NotImplementedError

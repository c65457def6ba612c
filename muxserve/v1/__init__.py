"""Generated gRPC code for protos/muxserve/v1 (python -m muxserve.protogen). Do not edit."""

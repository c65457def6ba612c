"""muxserve: serve many LLMs on shared devices with MuxServe's spatial-temporal multiplexing."""

__version__ = "0.1.0"
